/**
 * GET /rpc: the RpcGroup served natively by @effect/rpc over WebSocket
 * (JSON serialization), next to /ws on the same server and with the same
 * handlers, auth, limits, Hub accounting and shutdown. This module
 * assembles the route from its parts:
 *
 * - upgrades go through `WebSocketUpgrade` (frame limit, heartbeat);
 * - each upgraded socket is watched for a client that stops reading
 *   (`SlowReader`) and handed to RpcServer through `RpcSockets`;
 * - `RpcRequestGuard` wraps every request: Hub accounting, the per-connection
 *   in-flight limit, telemetry and the ledger.
 *
 * Cancelling is native: an RpcClient interrupts its fiber. Frames are
 * checked before RpcServer reads them, and payloads that fail their Schema
 * become typed `invalid_payload` errors (see RpcInput): no frame closes the
 * connection.
 */
import { HttpLayerRouter, Socket } from "@effect/platform"
import { RpcServer } from "@effect/rpc"
import { Duration, Effect, Layer, Runtime } from "effect"
import type { WebSocket } from "ws"
import { AppConfig } from "../config/AppConfig.js"
import { INSTANCE } from "../ledger/Ledger.js"
import * as RequestRecord from "../ledger/RequestRecord.js"
import type { Caller } from "../ledger/RequestRecord.js"
import { AiBaseRpcs } from "../protocol/Rpcs.js"
import * as Handlers from "../rpc/Handlers.js"
import * as RpcInput from "./RpcInput.js"
import * as RpcRequestGuard from "./RpcRequestGuard.js"
import { RequestGuard } from "./RpcRequestGuard.js"
import * as RpcSockets from "./RpcSockets.js"
import { dropWhenNotReading } from "./SlowReader.js"
import * as Mount from "./Mount.js"
import { WebSocketUpgrade } from "./WebSocketUpgrade.js"

export { RequestGuard } from "./RpcRequestGuard.js"

export const PATH = "/rpc" as const

const route = Layer.scopedDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const { limits, server } = yield* AppConfig
  const upgrader = yield* WebSocketUpgrade
  const sockets = yield* RpcSockets.RpcSockets
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  const watch = { maxBufferedBytes: limits.maxBufferedBytes, writeTimeout: server.writeTimeout }
  const onDropped = () => {
    runFork(Effect.logWarning("Dropping a client that is not reading its responses").pipe(
      Effect.annotateLogs({ reason: `nothing read for ${Duration.format(server.writeTimeout)}`, transport: "rpc" })
    ))
  }

  const serve = (raw: WebSocket, caller: Caller) =>
    Effect.gen(function*() {
      const socket = yield* Socket.fromWebSocket(
        // ws implements the WHATWG WebSocket interface the platform Socket expects.
        Effect.succeed(raw as unknown as globalThis.WebSocket),
        { closeCodeIsError: () => false }
      )
      yield* sockets.serve(dropWhenNotReading(raw, socket, watch, onDropped)).pipe(
        Effect.locally(RequestRecord.currentCaller, caller)
      )
    }).pipe(
      Effect.scoped,
      // The RPC server only stops serving an open socket when it failed.
      Effect.ensuring(Effect.sync(() => {
        if (raw.readyState === raw.OPEN) raw.close(1011, "unexpected server error")
      }))
    )

  const path = Mount.path(yield* Mount.Mount, PATH)
  yield* upgrader.endpoint(path, "rpc", (raw, membership, principal) => {
    membership.onShutdown(Effect.sync(() => raw.close(1001, "server shutting down")))
    runFork(serve(raw, { transport: "rpc", connectionId: `${INSTANCE}/${membership.id}`, principal }))
  })
  yield* router.add("GET", path, upgrader.route(path))
}))

/** The group as RpcServer serves it: payloads that fail their Schema become typed errors (see RpcInput). */
const served = RpcInput.lenientPayloads(AiBaseRpcs.middleware(RequestGuard))

/** The /rpc route and the RpcServer behind it. Needs the same services as /ws. */
export const layer = Layer.mergeAll(
  route,
  RpcServer.layer(served, { disableTracing: true }).pipe(
    Layer.provide([
      RpcServer.layerProtocolSocketServer,
      RpcRequestGuard.layer,
      RpcInput.guardHandlers(served).pipe(Layer.provide(Handlers.layer))
    ]),
    // JSON, with each frame's shape checked before RpcServer reads it (see RpcInput).
    Layer.provide(RpcInput.layerSerialization(served))
  )
).pipe(Layer.provide(RpcSockets.layer(PATH)))
