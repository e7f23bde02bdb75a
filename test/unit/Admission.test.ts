/**
 * Admission control for model calls: beyond the concurrency bound, or while
 * the event loop is late, a call is refused at once with a retryable
 * `overloaded` / `server_busy` error and does not run; a slot comes back when
 * a call ends, however it ends.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber } from "effect"
import { Admission } from "../../src/hub/Admission.js"
import { OverloadedError } from "../../src/protocol/Errors.js"
import * as Wait from "../support/Wait.js"

/** A call that reports when it starts and runs until `release` is completed. */
const heldCall = Effect.gen(function*() {
  const started = yield* Deferred.make<void>()
  const release = yield* Deferred.make<string>()
  const call = Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(release))
  const awaitStarted = Wait.awaitEvent(Deferred.await(started), { message: "the held call to start" })
  return { call, release, awaitStarted }
})

/** A call that counts its runs. */
const countingCall = () => {
  let runs = 0
  return { call: Effect.sync(() => ++runs), runs: () => runs }
}

const expectServerBusy = (error: unknown) => {
  expect(error).toBeInstanceOf(OverloadedError)
  if (!(error instanceof OverloadedError)) return
  expect(error.code).toBe("server_busy")
  expect(error.category).toBe("overloaded")
  expect(error.retryable).toBe(true)
}

describe("Admission", () => {
  it.scoped("with maxConcurrent 1, a second concurrent call is refused with server_busy and does not run", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make({ maxConcurrent: 1, maxEventLoopDelay: 1000, eventLoopDelay: () => 0 })
      const first = yield* heldCall
      const fiber = yield* Effect.fork(admission.guard(first.call))
      yield* first.awaitStarted
      expect(admission.running()).toBe(1)

      const second = countingCall()
      const refused = yield* Effect.flip(admission.guard(second.call))
      expectServerBusy(refused)
      expect(second.runs()).toBe(0)
      expect(admission.running()).toBe(1)

      // The first call is untouched by the refusal, and its slot comes back when it ends.
      yield* Deferred.succeed(first.release, "first done")
      expect(yield* Fiber.join(fiber)).toBe("first done")
      expect(admission.running()).toBe(0)

      const third = countingCall()
      expect(yield* admission.guard(third.call)).toBe(1)
      expect(third.runs()).toBe(1)
      expect(admission.running()).toBe(0)
    }))

  it.scoped("admits up to maxConcurrent calls at once, then refuses until one ends", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make({ maxConcurrent: 3, maxEventLoopDelay: 1000, eventLoopDelay: () => 0 })
      const calls = yield* Effect.all([heldCall, heldCall, heldCall])
      const fibers = yield* Effect.forEach(calls, (held) => Effect.fork(admission.guard(held.call)))
      yield* Effect.forEach(calls, (held) => held.awaitStarted)
      expect(admission.running()).toBe(3)
      const extra = countingCall()
      expectServerBusy(yield* Effect.flip(admission.guard(extra.call)))
      expect(extra.runs()).toBe(0)

      yield* Deferred.succeed(calls[1]!.release, "done")
      yield* Fiber.join(fibers[1]!)
      expect(admission.running()).toBe(2)
      expect(yield* admission.guard(extra.call)).toBe(1)
      yield* Effect.forEach([calls[0]!, calls[2]!], (held) => Deferred.succeed(held.release, "done"))
      yield* Fiber.joinAll(fibers)
      expect(admission.running()).toBe(0)
    }))

  it.scoped("a call that fails, dies or is interrupted gives its slot back", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make({ maxConcurrent: 1, maxEventLoopDelay: 1000, eventLoopDelay: () => 0 })

      const failed = yield* Effect.exit(admission.guard(Effect.fail("upstream failed")))
      expect(failed).toEqual(Exit.fail("upstream failed"))
      expect(admission.running()).toBe(0)

      const died = yield* Effect.exit(admission.guard(Effect.dieMessage("bug")))
      expect(Exit.isFailure(died)).toBe(true)
      expect(admission.running()).toBe(0)

      const held = yield* heldCall
      const fiber = yield* Effect.fork(admission.guard(held.call))
      yield* held.awaitStarted
      expect(admission.running()).toBe(1)
      yield* Fiber.interrupt(fiber)
      expect(admission.running()).toBe(0)

      const next = countingCall()
      expect(yield* admission.guard(next.call)).toBe(1)
    }))

  it.scoped("while the event loop is later than maxEventLoopDelay, every call is refused and none runs", () =>
    Effect.gen(function*() {
      let delay = 2000
      const admission = yield* Admission.make({ maxConcurrent: 100, maxEventLoopDelay: 1000, eventLoopDelay: () => delay })
      const call = countingCall()
      for (let i = 0; i < 5; i++) {
        expectServerBusy(yield* Effect.flip(admission.guard(call.call)))
      }
      expect(call.runs()).toBe(0)
      expect(admission.running()).toBe(0)

      // A delay at the limit is not over it; once the loop catches up, calls run again.
      delay = 1000
      expect(yield* admission.guard(call.call)).toBe(1)
      delay = 5
      expect(yield* admission.guard(call.call)).toBe(2)
      delay = 1001
      expectServerBusy(yield* Effect.flip(admission.guard(call.call)))
      expect(call.runs()).toBe(2)
    }))

  it.scoped("a refused call is refused before it starts: its effect is never evaluated", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make({ maxConcurrent: 1, maxEventLoopDelay: 1000, eventLoopDelay: () => 2000 })
      let evaluated = false
      const refused = yield* Effect.flip(admission.guard(Effect.suspend(() => {
        evaluated = true
        return Effect.void
      })))
      expectServerBusy(refused)
      expect(evaluated).toBe(false)
    }))

  it.scoped("with the measured event-loop delay (the default), an idle process admits calls", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make({ maxConcurrent: 2, maxEventLoopDelay: 1000 })
      const call = countingCall()
      expect(yield* admission.guard(call.call)).toBe(1)
      expect(yield* admission.guard(call.call)).toBe(2)
      expect(admission.running()).toBe(0)
    }))
})
