/**
 * The middleware around every /rpc request: counts it with the Hub (so that
 * shutdown drains and stops it), bounds the requests in flight per
 * connection, reports it to telemetry, and records it in the ledger when its
 * type is recorded.
 */
import type { Headers } from "@effect/platform"
import { RpcMiddleware } from "@effect/rpc"
import { Cause, Effect, Exit, Fiber, FiberRef, HashSet, Layer } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { Hub, isShutdown, stoppedAtShutdown } from "../hub/Hub.js"
import { Ledger, RECORDED_RPCS } from "../ledger/Ledger.js"
import * as RequestRecord from "../ledger/RequestRecord.js"
import { finishRecord, Telemetry } from "../observability/Telemetry.js"
import { AiBaseError, OverloadedError } from "../protocol/Errors.js"
import { WireNames } from "../protocol/Rpcs.js"
import * as RpcInput from "./RpcInput.js"

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

export const layer = Layer.effect(
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
