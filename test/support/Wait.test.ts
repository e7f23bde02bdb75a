/** The wait helpers: they wait for the condition or event, fail with a message naming it, and run on the real clock. */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Either } from "effect"
import * as Wait from "./Wait.js"

describe("Wait", () => {
  it.live("waitFor returns as soon as the condition holds", () =>
    Effect.gen(function*() {
      const started = Date.now()
      yield* Wait.waitFor(() => Date.now() - started >= 50, { message: "50 ms to pass" })
      expect(Date.now() - started).toBeLessThan(2000)
    }))

  it.live("poll fails after its deadline, naming what it waited for and the last value seen", () =>
    Effect.gen(function*() {
      let n = 0
      const error = yield* Effect.flip(
        Wait.poll(Effect.sync(() => ++n), (value) => value < 0, { message: "a negative number", timeout: "100 millis" })
      )
      expect(error._tag).toBe("WaitTimeout")
      expect(error.message).toMatch(/^waited 100ms for a negative number; last saw \d+$/)
      expect(n).toBeGreaterThan(1)
    }))

  it.live("poll treats failures of the check as not yet, and reports the last one", () =>
    Effect.gen(function*() {
      let calls = 0
      const flaky = Effect.suspend(() => ++calls < 3 ? Effect.fail(new Error("refused")) : Effect.succeed("ok"))
      expect(yield* Wait.poll(flaky, (value) => value === "ok", { message: "ok" })).toBe("ok")
      const error = yield* Effect.flip(Wait.poll(Effect.fail(new Error("refused")), () => true, { message: "x", timeout: "50 millis" }))
      expect(error.message).toContain("last saw a failure: Error: refused")
    }))

  it.live("awaitEvent waits for the event, or fails after its deadline", () =>
    Effect.gen(function*() {
      const done = yield* Deferred.make<number>()
      yield* Effect.fork(Effect.zipRight(Effect.sleep("20 millis"), Deferred.succeed(done, 7)))
      expect(yield* Wait.awaitEvent(Deferred.await(done), { message: "the answer" })).toBe(7)
      const error = yield* Effect.flip(Wait.awaitEvent(Effect.never, { message: "nothing", timeout: "30 millis" }))
      expect(error.message).toBe("waited 30ms for nothing")
    }))

  it.effect("deadlines run on the real clock under TestClock", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Wait.awaitEvent(Effect.never, { message: "nothing", timeout: "30 millis" }))
      expect(error._tag).toBe("WaitTimeout")
      const polled = yield* Effect.either(Wait.waitFor(() => false, { message: "never", timeout: "30 millis" }))
      expect(Either.isLeft(polled)).toBe(true)
    }))

  it.live("expectNothingWithin passes when nothing happens, and fails at once when it does", () =>
    Effect.gen(function*() {
      yield* Wait.expectNothingWithin("30 millis", Effect.never, { message: "event" })
      yield* Wait.expectNothingWithin("30 millis", () => false, { message: "change" })
      const started = Date.now()
      const error = yield* Effect.flip(Wait.expectNothingWithin("5 seconds", Effect.succeed("boom"), { message: "event" }))
      expect(error.message).toBe("expected no event within 5s, but got \"boom\"")
      expect(Date.now() - started).toBeLessThan(1000)
      const changed = yield* Effect.flip(Wait.expectNothingWithin("5 seconds", () => true, { message: "change" }))
      expect(changed._tag).toBe("UnexpectedEvent")
    }))

  it("has Promise twins", async () => {
    let ready = false
    setTimeout(() => (ready = true), 20)
    await Wait.waitForPromise(() => ready, { message: "ready" })
    await expect(Wait.waitForPromise(() => Promise.resolve(false), { message: "never", timeout: 30 }))
      .rejects.toThrow("waited 30ms for never")
    await expect(Wait.awaitEventPromise(Promise.resolve(1), { message: "one" })).resolves.toBe(1)
    await expect(Wait.awaitEventPromise(new Promise(() => {}), { message: "nothing", timeout: 30 }))
      .rejects.toBeInstanceOf(Wait.WaitTimeout)
    await Wait.expectNothingWithinPromise(30, () => false, { message: "change" })
    await expect(Wait.expectNothingWithinPromise(1000, async () => true, { message: "change" }))
      .rejects.toThrow("expected no change within 1s, but it happened")
  })
})
