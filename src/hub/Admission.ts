/**
 * Admission control for work that calls the model provider (chat
 * completions, streams, embeddings): when the process cannot serve more in
 * time, new requests get a retryable `overloaded` error at once instead of
 * slowing every request already running.
 *
 * Two measures: a bound on concurrent model calls (MAX_CONCURRENT_STREAMS),
 * and the event loop's delay (MAX_EVENT_LOOP_DELAY_MS): a loop that is late
 * by that much is saturated, and more work would only make every client,
 * /health and shutdown wait longer. Pings and tool listings are never refused.
 */
import { Context, Duration, Effect, Layer } from "effect"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { AppConfig } from "../config/AppConfig.js"
import { OverloadedError } from "../protocol/Errors.js"

export interface Options {
  readonly maxConcurrent: number
  readonly maxEventLoopDelay: Duration.DurationInput
  /**
   * The event loop's current delay in milliseconds (default: measured with
   * perf_hooks over the last half second); tests pass their own.
   */
  readonly eventLoopDelay?: () => number
}

/** How often the measured delay is read (and the histogram reset). */
const SAMPLE_INTERVAL_MS = 500

export class Admission extends Context.Tag("aibase/Admission")<Admission, {
  /** Runs a model call if there is room; fails with `overloaded` otherwise. */
  readonly guard: <A, E, R>(call: Effect.Effect<A, E, R>) => Effect.Effect<A, E | OverloadedError, R>
  /** Model calls running now. */
  readonly running: () => number
}>() {
  static readonly make = (options: Options) =>
    Effect.gen(function*() {
      const limitMs = Duration.toMillis(options.maxEventLoopDelay)
      const delay = options.eventLoopDelay ?? (yield* measuredDelay)
      let running = 0
      const tooMany = new OverloadedError({
        code: "server_busy",
        message: `The server is running ${options.maxConcurrent} model calls; retry shortly`
      })
      const saturated = new OverloadedError({
        code: "server_busy",
        message: "The server is saturated; retry shortly"
      })
      const release = Effect.sync(() => {
        running--
      })
      const guard = <A, E, R>(call: Effect.Effect<A, E, R>): Effect.Effect<A, E | OverloadedError, R> =>
        Effect.suspend((): Effect.Effect<A, E | OverloadedError, R> => {
          if (running >= options.maxConcurrent) return Effect.fail(tooMany)
          if (delay() > limitMs) return Effect.fail(saturated)
          running++
          return Effect.ensuring(call, release)
        })
      return Admission.of({ guard, running: () => running })
    })

  static readonly layer = (options: Options) => Layer.scoped(Admission, Admission.make(options))

  static readonly layerConfig: Layer.Layer<Admission, never, AppConfig> = Layer.unwrapEffect(
    Effect.map(AppConfig, (config) =>
      Admission.layer({
        maxConcurrent: config.limits.maxConcurrentStreams,
        maxEventLoopDelay: config.limits.maxEventLoopDelay
      }))
  )
}

/** The event loop's delay, from a perf_hooks histogram read every half second. */
const measuredDelay = Effect.gen(function*() {
  const histogram = monitorEventLoopDelay({ resolution: 20 })
  let latest = 0
  yield* Effect.acquireRelease(
    Effect.sync(() => {
      histogram.enable()
      const timer = setInterval(() => {
        // Nanoseconds; the resolution itself is not delay.
        latest = Math.max(0, histogram.max / 1e6 - 20)
        histogram.reset()
      }, SAMPLE_INTERVAL_MS)
      timer.unref()
      return timer
    }),
    (timer) =>
      Effect.sync(() => {
        clearInterval(timer)
        histogram.disable()
      })
  )
  return () => latest
})
