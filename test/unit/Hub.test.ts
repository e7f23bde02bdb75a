/**
 * The Hub: connection admission, request accounting, and the graceful drain
 * (with TestClock, so the grace period passes without waiting).
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Ref, TestClock } from "effect"
import { AppConfig } from "../../src/config/AppConfig.js"
import { Hub, isShutdown } from "../../src/hub/Hub.js"
import * as Wait from "../support/Wait.js"

/** `effect`, reporting through `started` once it runs (so the Hub has taken it in). */
const signalling = <A, E, R>(started: Deferred.Deferred<void>, effect: Effect.Effect<A, E, R>) =>
  Effect.zipRight(Deferred.succeed(started, undefined), effect)

const awaitStarted = (started: Deferred.Deferred<void>) =>
  Wait.awaitEvent(Deferred.await(started), { message: "the tracked request to start" })

const provideHub = (env: Record<string, string> = {}) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    effect.pipe(Effect.provide(Hub.layerFromAppConfig), Effect.provide(AppConfig.layerFromEnv(env)))

describe("Hub", () => {
  it.scoped("admits connections up to MAX_CONNECTIONS and counts them while their scope lives", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      yield* hub.connect("ws")
      const inner = yield* Effect.scoped(Effect.gen(function*() {
        yield* hub.connect("rpc")
        const full = yield* Effect.flip(hub.connect("ws"))
        expect(full.reason).toBe("too_many_connections")
        return yield* hub.stats
      }))
      expect(inner.clientsByTransport).toEqual({ ws: 1, rpc: 1 })
      expect((yield* hub.stats).clients).toBe(1)
    }).pipe(provideHub({ MAX_CONNECTIONS: "2" })))

  it.scoped("counts requests in flight", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const gate = yield* Deferred.make<void>()
      const started = yield* Deferred.make<void>()
      const fiber = yield* Effect.fork(hub.track(signalling(started, Deferred.await(gate))))
      yield* awaitStarted(started)
      expect((yield* hub.stats).inFlight).toBe(1)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(fiber)
      expect((yield* hub.stats).inFlight).toBe(0)
    }).pipe(provideHub()))

  it.scoped("drain lets requests finish within the grace period, then closes connections", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const closed = yield* Ref.make(0)
      const membership = yield* hub.connect("ws")
      membership.onShutdown(Ref.update(closed, (n) => n + 1))
      const started = yield* Deferred.make<void>()
      const request = yield* Effect.fork(hub.track(signalling(started, Effect.sleep("3 seconds").pipe(Effect.as("done")))))
      yield* awaitStarted(started)
      const draining = yield* Effect.fork(hub.drain("5 seconds"))
      yield* Wait.waitFor(Effect.map(hub.stats, (stats) => stats.draining), { message: "the drain to begin" })

      expect((yield* hub.stats).draining).toBe(true)
      const refused = yield* Effect.flip(hub.track(Effect.void))
      expect(refused).toMatchObject({ category: "unavailable", code: "shutting_down" })
      expect(yield* Effect.flip(hub.connect("ws"))).toMatchObject({ reason: "shutting_down" })

      yield* TestClock.adjust("3 seconds")
      expect(yield* Fiber.join(request)).toBe("done")
      yield* TestClock.adjust("100 millis")
      expect(yield* Ref.get(closed)).toBe(1)
      // The connection stays open here, so the drain gives up waiting for it after 2 s.
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(draining)
    }).pipe(provideHub()))

  it.scoped("requests still running when the grace period ends are interrupted by the shutdown", () =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const started = yield* Deferred.make<void>()
      const request = yield* Effect.fork(hub.track(signalling(started, Effect.never)))
      yield* awaitStarted(started)
      const draining = yield* Effect.fork(hub.drain("2 seconds"))
      yield* TestClock.adjust("1 second")
      expect(request.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1100 millis")
      const exit = yield* Fiber.await(request)
      expect(Exit.isFailure(exit) && isShutdown(Cause.interruptors(exit.cause))).toBe(true)
      yield* TestClock.adjust("100 millis")
      yield* Fiber.join(draining)
      expect((yield* hub.stats).inFlight).toBe(0)
    }).pipe(provideHub()))
})
