/**
 * GET /ws: the JSON envelope protocol, one `WsConnection` per client.
 */
import { HttpLayerRouter } from "@effect/platform"
import { Effect, Layer, Runtime } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { Hub } from "../hub/Hub.js"
import { INSTANCE } from "../ledger/Ledger.js"
import { Telemetry } from "../observability/Telemetry.js"
import * as Envelope from "./Envelope.js"
import * as Mount from "./Mount.js"
import { WebSocketUpgrade } from "./WebSocketUpgrade.js"
import * as WsConnection from "./WsConnection.js"

export const PATH = "/ws" as const

export const layer = Layer.scopedDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const config = yield* AppConfig
  const hub = yield* Hub
  const upgrader = yield* WebSocketUpgrade
  const envelope = yield* Envelope.make
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  const options: WsConnection.Options = {
    envelope,
    hub,
    telemetry: yield* Telemetry,
    limits: {
      maxInFlight: config.limits.maxInFlight,
      maxBufferedBytes: config.limits.maxBufferedBytes,
      writeTimeout: config.server.writeTimeout
    },
    fork: (effect) => runFork(effect),
    onDefect: (cause, request) => {
      runFork(Effect.logError("Request failed unexpectedly", cause).pipe(
        Effect.annotateLogs({ request_id: request.requestId, request_type: request.type })
      ))
    },
    onDropped: (reason) => {
      runFork(Effect.logWarning("Dropping a client that is not reading its responses").pipe(
        Effect.annotateLogs({ reason, transport: "ws" })
      ))
    }
  }

  const path = Mount.path(yield* Mount.Mount, PATH)
  yield* upgrader.endpoint(path, "ws", (ws, membership, principal) =>
    WsConnection.serve(ws, membership, { transport: "ws", connectionId: `${INSTANCE}/${membership.id}`, principal }, options))
  yield* router.add("GET", path, upgrader.route(path))
}))
