/**
 * GET /rpc: the RpcGroup served natively by @effect/rpc over WebSocket
 * (JSON serialization), next to /ws on the same server and with the same
 * handlers, auth, limits, Hub accounting and shutdown.
 *
 * Upgrades go through `WebSocketUpgrade` (frame limit, heartbeat), and the
 * upgraded sockets are handed to RpcServer's socket protocol through a
 * `SocketServer` fed by this route. A wrapping middleware counts each
 * request with the Hub and bounds the requests in flight per connection.
 * Cancelling is native: an RpcClient interrupts its fiber.
 */
import { HttpLayerRouter, type Socket, SocketServer } from "@effect/platform"
import { RpcMiddleware, RpcSerialization, RpcServer } from "@effect/rpc"
import { Cause, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Schedule } from "effect"
import type { WebSocket } from "ws"
import { AppConfig } from "../config/AppConfig.js"
import { Hub, isShutdown, stoppedAtShutdown } from "../hub/Hub.js"
import { AiBaseError, OverloadedError } from "../protocol/Errors.js"
import { AiBaseRpcs } from "../protocol/Rpcs.js"
import * as Handlers from "../rpc/Handlers.js"
import { WebSocketUpgrade } from "./WebSocketUpgrade.js"

export const PATH = "/rpc"

/** Counts every /rpc request with the Hub and limits those in flight per connection. */
export class RequestGuard extends RpcMiddleware.Tag<RequestGuard>()("aibase/RequestGuard", {
  wrap: true,
  failure: AiBaseError
}) {}

const layerRequestGuard = Layer.effect(
  RequestGuard,
  Effect.gen(function*() {
    const hub = yield* Hub
    const { maxInFlight } = (yield* AppConfig).limits
    const inFlight = new Map<number, number>()
    const overloaded = new OverloadedError({
      code: "too_many_in_flight",
      message: `This connection already has ${maxInFlight} requests in flight; wait for one to finish`
    })
    const release = (clientId: number) =>
      Effect.sync(() => {
        const remaining = (inFlight.get(clientId) ?? 1) - 1
        if (remaining > 0) inFlight.set(clientId, remaining)
        else inFlight.delete(clientId)
      })
    // The request runs in a child fiber so that, if the Hub stops it at
    // shutdown, the client gets a typed `unavailable` error instead of an interruption.
    const guarded = <A, E, R>(next: Effect.Effect<A, E, R>) =>
      hub.track(next).pipe(
        Effect.fork,
        Effect.flatMap(Fiber.await),
        Effect.flatMap((exit) =>
          Exit.isFailure(exit) && isShutdown(Cause.interruptors(exit.cause)) ? Effect.fail(stoppedAtShutdown) : exit
        )
      )
    return RequestGuard.of(({ clientId, next }) =>
      Effect.suspend(() => {
        const count = inFlight.get(clientId) ?? 0
        if (count >= maxInFlight) return Effect.fail(overloaded)
        inFlight.set(clientId, count + 1)
        return guarded(next).pipe(Effect.ensuring(release(clientId)))
      })
    )
  })
)

/** The sockets this route upgrades, as a SocketServer for RpcServer's socket protocol. */
class RpcSockets extends Context.Tag("aibase/RpcSockets")<RpcSockets, {
  /** Serves one upgraded socket until it closes. */
  readonly serve: (socket: Socket.Socket) => Effect.Effect<void>
}>() {}

const layerSockets = Layer.effectContext(Effect.gen(function*() {
  const handler = yield* Deferred.make<(socket: Socket.Socket) => Effect.Effect<void>>()
  const server = SocketServer.SocketServer.of({
    address: { _tag: "UnixAddress", path: PATH },
    run: (handle) =>
      Effect.gen(function*() {
        const context = yield* Effect.context<Effect.Effect.Context<ReturnType<typeof handle>>>()
        yield* Deferred.succeed(handler, (socket) =>
          handle(socket).pipe(
            Effect.provide(context),
            Effect.catchAllCause((cause) => Effect.logDebug("RPC socket ended with an error", cause))
          ))
        return yield* Effect.never
      })
  })
  const sockets = RpcSockets.of({
    serve: (socket) => Effect.flatMap(Deferred.await(handler), (serve) => serve(socket))
  })
  return Context.make(SocketServer.SocketServer, server).pipe(Context.add(RpcSockets, sockets))
}))

/** Drops a client that has not read its answers for SERVER_WRITE_TIMEOUT (ws buffers without limit). */
const dropWhenNotReading = (raw: WebSocket, maxBufferedBytes: number, writeTimeout: Duration.Duration) =>
  Effect.suspend(() => {
    let overSince: number | undefined
    return Effect.sync(() => {
      if (raw.bufferedAmount <= maxBufferedBytes) {
        overSince = undefined
        return
      }
      const now = Date.now()
      overSince ??= now
      if (now - overSince >= Duration.toMillis(writeTimeout)) raw.terminate()
    }).pipe(Effect.repeat(Schedule.spaced(Duration.millis(250))))
  })

const route = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const { limits, server } = yield* AppConfig
  const upgrader = yield* WebSocketUpgrade
  const sockets = yield* RpcSockets

  yield* router.add(
    "GET",
    PATH,
    upgrader.route("rpc", ({ raw, socket }, membership) =>
      Effect.gen(function*() {
        membership.onShutdown(Effect.sync(() => raw.close(1001, "server shutting down")))
        yield* dropWhenNotReading(raw, limits.maxBufferedBytes, server.writeTimeout).pipe(Effect.forkScoped)
        yield* sockets.serve(socket)
      }))
  )
}))

/** The /rpc route and the RpcServer behind it. Needs the same services as /ws. */
export const layer = Layer.mergeAll(
  route,
  RpcServer.layer(AiBaseRpcs.middleware(RequestGuard), { disableTracing: true }).pipe(
    Layer.provide([RpcServer.layerProtocolSocketServer, layerRequestGuard, Handlers.layer]),
    Layer.provide(RpcSerialization.layerJson)
  )
).pipe(Layer.provide(layerSockets))
