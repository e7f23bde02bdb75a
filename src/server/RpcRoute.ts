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
 *
 * Frames are checked before RpcServer reads them, and payloads that fail
 * their Schema become typed `invalid_payload` errors (see RpcInput): no frame
 * closes the connection.
 */
import { type Headers, HttpLayerRouter, Socket, SocketServer } from "@effect/platform"
import { RpcMiddleware, RpcServer } from "@effect/rpc"
import { Cause, Context, Deferred, Duration, Effect, Exit, Fiber, FiberRef, HashSet, Layer, Runtime, Schedule } from "effect"
import type { WebSocket } from "ws"
import { AppConfig } from "../config/AppConfig.js"
import { Hub, isShutdown, stoppedAtShutdown } from "../hub/Hub.js"
import { AiBaseError, OverloadedError } from "../protocol/Errors.js"
import { AiBaseRpcs, WireNames } from "../protocol/Rpcs.js"
import { INSTANCE, Ledger, RECORDED_RPCS } from "../ledger/Ledger.js"
import { finishRecord, Telemetry } from "../observability/Telemetry.js"
import * as RequestRecord from "../ledger/RequestRecord.js"
import type { Caller } from "../ledger/RequestRecord.js"
import * as Handlers from "../rpc/Handlers.js"
import * as RpcInput from "./RpcInput.js"
import { WebSocketUpgrade } from "./WebSocketUpgrade.js"

export const PATH = "/rpc"

/** Counts every /rpc request with the Hub and limits those in flight per connection. */
export class RequestGuard extends RpcMiddleware.Tag<RequestGuard>()("aibase/RequestGuard", {
  wrap: true,
  failure: AiBaseError
}) {}

/** The /ws name of each Rpc the ledger records, by tag. */
const recordedTypes: ReadonlyMap<string, string> = new Map(
  [...RECORDED_RPCS].map((tag) => [tag, WireNames[tag].request])
)

/** The /ws name of every Rpc, by tag (the `type` label of its metrics). */
const wireTypes: ReadonlyMap<string, string> = new Map(
  Object.entries(WireNames).map(([tag, names]) => [tag, names.request])
)

const layerRequestGuard = Layer.effect(
  RequestGuard,
  Effect.gen(function*() {
    const hub = yield* Hub
    const ledger = yield* Ledger
    const telemetry = yield* Telemetry
    const finish = finishRecord(ledger, telemetry)
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
    // shutdown, the client gets a typed `unavailable` error instead of an
    // interruption. The slot is held until the child has stopped: when the
    // request is interrupted (the client's Interrupt, a disconnect), the
    // child is interrupted and awaited before the slot is given back. All
    // but the two `restore`d parts is uninterruptible, so the slot cannot leak.
    /** The request, in the ledger when its type is recorded. */
    const recorded = <A, E, R>(
      request: Effect.Effect<A, E, R>,
      tag: string,
      headers: Headers.Headers
    ): Effect.Effect<A, E, R> => {
      const type = recordedTypes.get(tag)
      if (type === undefined) return request
      return Effect.flatMap(FiberRef.get(RequestRecord.currentCaller), (caller) => {
        const record = ledger.begin(headers[RpcInput.REQUEST_ID_HEADER] ?? "", type, caller ?? RequestRecord.inProcess)
        return request.pipe(
          Effect.locally(RequestRecord.current, record),
          Effect.onExit((exit) => record.finishedBy === "request" ? finish(record, exit) : Effect.void)
        )
      })
    }
    return RequestGuard.of(({ clientId, headers, next, rpc }) =>
      Effect.uninterruptibleMask((restore) => {
        const count = inFlight.get(clientId) ?? 0
        if (count >= maxInFlight) return Effect.fail(overloaded)
        inFlight.set(clientId, count + 1)
        const type = wireTypes.get(rpc._tag) ?? rpc._tag
        telemetry.requestStarted(type)
        return Effect.flatMap(Effect.fork(restore(recorded(hub.track(next), rpc._tag, headers))), (child) =>
          Effect.matchCauseEffect(restore(Fiber.await(child)), {
            // Awaiting cannot fail: this is the request being interrupted.
            // By the same FiberId, so that the request can tell a disconnect from a cancel.
            onFailure: (cause) =>
              interruptLike(child, cause).pipe(
                Effect.zipRight(Fiber.await(child)),
                Effect.tap((exit) => telemetry.requestEnded(type, "rpc", exit)),
                Effect.zipRight(release(clientId)),
                Effect.zipRight(Effect.failCause(cause))
              ),
            onSuccess: (exit) =>
              Effect.zipRight(
                Effect.zipRight(Effect.sync(() => telemetry.requestEnded(type, "rpc", exit)), release(clientId)),
                Exit.isFailure(exit) && isShutdown(Cause.interruptors(exit.cause)) ? Effect.fail(stoppedAtShutdown) : exit
              )
          }))
      })
    )
  })
)

/** Interrupts `fiber` by whoever interrupted `cause`. */
const interruptLike = <A, E>(fiber: Fiber.RuntimeFiber<A, E>, cause: Cause.Cause<unknown>) => {
  const by = HashSet.values(Cause.interruptors(cause)).next()
  return by.done === true ? Fiber.interrupt(fiber) : Fiber.interruptAs(fiber, by.value)
}

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

const route = Layer.scopedDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const { limits, server } = yield* AppConfig
  const upgrader = yield* WebSocketUpgrade
  const sockets = yield* RpcSockets
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())

  const serve = (raw: WebSocket, caller: Caller) =>
    Effect.gen(function*() {
      const socket = yield* Socket.fromWebSocket(
        // ws implements the WHATWG WebSocket interface the platform Socket expects.
        Effect.succeed(raw as unknown as globalThis.WebSocket),
        { closeCodeIsError: () => false }
      )
      yield* dropWhenNotReading(raw, limits.maxBufferedBytes, server.writeTimeout).pipe(Effect.forkScoped)
      yield* sockets.serve(socket).pipe(Effect.locally(RequestRecord.currentCaller, caller))
    }).pipe(
      Effect.scoped,
      // The RPC server only stops serving an open socket when it failed.
      Effect.ensuring(Effect.sync(() => {
        if (raw.readyState === raw.OPEN) raw.close(1011, "unexpected server error")
      }))
    )

  yield* upgrader.endpoint(PATH, "rpc", (raw, membership, principal) => {
    membership.onShutdown(Effect.sync(() => raw.close(1001, "server shutting down")))
    runFork(serve(raw, { transport: "rpc", connectionId: `${INSTANCE}/${membership.id}`, principal }))
  })
  yield* router.add("GET", PATH, upgrader.route(PATH))
}))

/** The group as RpcServer serves it: payloads that fail their Schema become typed errors (see RpcInput). */
const served = RpcInput.lenientPayloads(AiBaseRpcs.middleware(RequestGuard))

/** The /rpc route and the RpcServer behind it. Needs the same services as /ws. */
export const layer = Layer.mergeAll(
  route,
  RpcServer.layer(served, { disableTracing: true }).pipe(
    Layer.provide([
      RpcServer.layerProtocolSocketServer,
      layerRequestGuard,
      RpcInput.guardHandlers(served).pipe(Layer.provide(Handlers.layer))
    ]),
    // JSON, with each frame's shape checked before RpcServer reads it (see RpcInput).
    Layer.provide(RpcInput.layerSerialization(served))
  )
).pipe(Layer.provide(layerSockets))
