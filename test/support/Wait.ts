/**
 * Waiting in tests, always for a condition or an event and always with a
 * deadline: never a fixed sleep, never a fixed number of retries.
 *
 * - `awaitEvent`: waits for something that signals (a frame, a Deferred, a
 *   process exit, a promise). Prefer it wherever the code under test signals.
 * - `waitFor` / `poll`: re-check a condition every `interval` (a spaced
 *   schedule) until it holds, where nothing signals (e.g. /health).
 * - `expectNothingWithin`: the only fixed window, for asserting that something
 *   does NOT happen. Keep those windows short.
 *
 * Deadlines and intervals run on the real clock, also inside `it.effect` /
 * `it.scoped` under TestClock, so a wait always ends. A wait that times out
 * fails with a `WaitTimeout` naming what it waited for (and, when polling, the
 * last thing it saw). Each has a Promise twin for plain async tests.
 */
import { Cause, Clock, Data, Duration, Effect, Exit, Schedule } from "effect"

/** Long enough for a busy machine, well under the 30 s test timeout. */
export const DEFAULT_TIMEOUT: Duration.Duration = Duration.seconds(10)
/** Between two checks of a polled condition. */
export const DEFAULT_INTERVAL: Duration.Duration = Duration.millis(20)

/** A wait whose deadline passed before its condition held or its event came. */
export class WaitTimeout extends Data.TaggedError("WaitTimeout")<{ readonly message: string }> {}

/** Something an `expectNothingWithin` window ruled out did happen. */
export class UnexpectedEvent extends Data.TaggedError("UnexpectedEvent")<{ readonly message: string }> {}

export interface WaitOptions {
  /** What is awaited, for the failure message: "waited 10s for <message>". */
  readonly message: string
  /** The deadline (default 10 s). */
  readonly timeout?: Duration.DurationInput
  /** Between two checks of a polled condition (default 20 ms). */
  readonly interval?: Duration.DurationInput
}

export interface WindowOptions {
  /** What must not happen, for the failure message: "expected no <message> within 200ms". */
  readonly message: string
  /** Between two checks of a polled condition (default 20 ms). */
  readonly interval?: Duration.DurationInput
}

/** A condition: checked synchronously, or by an Effect whose failures count as "not yet". */
export type Condition<E = never, R = never> = (() => boolean) | Effect.Effect<boolean, E, R>

const liveClock = Clock.make()

/** Runs `effect` with the real clock, whatever clock the test runs under. */
const onRealClock = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => Effect.withClock(effect, liveClock)

const show = (value: unknown): string => {
  if (value instanceof Error) return `${value.name}: ${value.message}`
  try {
    const json = JSON.stringify(value)
    if (json === undefined) return String(value)
    return json.length > 500 ? `${json.slice(0, 500)}…` : json
  } catch {
    return String(value)
  }
}

const timedOut = (message: string, timeout: Duration.DurationInput, lastSeen?: string) =>
  new WaitTimeout({
    message: `waited ${Duration.format(timeout)} for ${message}${lastSeen === undefined ? "" : `; last saw ${lastSeen}`}`
  })

const asEffect = <E, R>(condition: Condition<E, R>): Effect.Effect<boolean, E, R> =>
  Effect.isEffect(condition) ? condition : Effect.sync(condition)

class NotYet extends Data.TaggedError("NotYet")<{}> {}

/**
 * Runs `sample` every `interval` until `until` holds for its value, and returns
 * that value. A failure or defect of `sample` counts as "not yet"; the last
 * value or failure seen is named in the timeout message.
 */
export const poll = <A, E, R>(
  sample: Effect.Effect<A, E, R>,
  until: (value: A) => boolean,
  options: WaitOptions
): Effect.Effect<A, WaitTimeout, R> =>
  Effect.suspend(() => {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT
    let lastSeen: string | undefined = "nothing: no check finished"
    const check: Effect.Effect<A, NotYet, R> = sample.pipe(
      Effect.catchAllCause((cause): Effect.Effect<never, NotYet> => {
        if (Cause.isInterruptedOnly(cause)) return Effect.interrupt
        lastSeen = `a failure: ${show(Cause.squash(cause))}`
        return Effect.fail(new NotYet())
      }),
      Effect.filterOrFail(until, (value) => {
        lastSeen = show(value)
        return new NotYet()
      })
    )
    return check.pipe(
      Effect.retry(Schedule.spaced(options.interval ?? DEFAULT_INTERVAL)),
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () => timedOut(options.message, timeout, lastSeen === "false" ? undefined : lastSeen)
      }),
      // For the types only: NotYet is retried until the deadline.
      Effect.catchTag("NotYet", () => Effect.fail(timedOut(options.message, timeout, lastSeen))),
      onRealClock
    )
  })

/** Re-checks `condition` every `interval` until it holds; fails with a `WaitTimeout` after `timeout`. */
export const waitFor = <E = never, R = never>(condition: Condition<E, R>, options: WaitOptions): Effect.Effect<void, WaitTimeout, R> =>
  Effect.asVoid(poll(asEffect(condition), (holds) => holds, options))

/** Waits for `event` (an Effect that completes when the thing happens); fails with a `WaitTimeout` after `timeout`. */
export const awaitEvent = <A, E, R>(
  event: Effect.Effect<A, E, R>,
  options: Omit<WaitOptions, "interval">
): Effect.Effect<A, E | WaitTimeout, R> => {
  const timeout = options.timeout ?? DEFAULT_TIMEOUT
  return event.pipe(
    Effect.timeoutFail({ duration: timeout, onTimeout: () => timedOut(options.message, timeout) }),
    onRealClock
  )
}

/**
 * Asserts that something does NOT happen within `window`: a fixed window, so
 * keep it short. `happened` is an event (an Effect that completes when the
 * thing happens, e.g. `client.closed`) or a condition re-checked every
 * `interval` and once more when the window ends. Fails with an
 * `UnexpectedEvent` as soon as it happens.
 */
export const expectNothingWithin = <A, E = never, R = never>(
  window: Duration.DurationInput,
  happened: Effect.Effect<A, E, R> | (() => boolean),
  options: WindowOptions
): Effect.Effect<void, E | UnexpectedEvent, R> => {
  const unexpected = (what: string) =>
    new UnexpectedEvent({ message: `expected no ${options.message} within ${Duration.format(window)}, but ${what}` })
  if (!Effect.isEffect(happened)) {
    const check = Effect.suspend(() => happened() ? Effect.fail(unexpected("it happened")) : Effect.void)
    return check.pipe(
      Effect.repeat(Schedule.spaced(options.interval ?? DEFAULT_INTERVAL)),
      Effect.raceFirst(Effect.sleep(window)),
      Effect.zipRight(check),
      onRealClock
    )
  }
  return happened.pipe(
    Effect.flatMap((value) => Effect.fail(unexpected(`got ${show(value)}`))),
    Effect.raceFirst(Effect.sleep(window)),
    onRealClock
  )
}

// ---------------------------------------------------------------------------
// Promise twins, for plain async tests

const run = async <A, E>(effect: Effect.Effect<A, E>): Promise<A> => {
  const exit = await Effect.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

/** `waitFor` for plain async tests: `condition` may return a promise; its rejections count as "not yet". */
export const waitForPromise = (condition: () => boolean | Promise<boolean>, options: WaitOptions): Promise<void> =>
  run(waitFor(Effect.tryPromise(async () => condition()), options))

/** `awaitEvent` for plain async tests. */
export const awaitEventPromise = <A>(event: Promise<A>, options: Omit<WaitOptions, "interval">): Promise<A> =>
  run(awaitEvent(Effect.tryPromise({ try: () => event, catch: (error) => error }), options))

/** `expectNothingWithin` for plain async tests: `happened` is re-checked every `interval` and at the end of the window. */
export const expectNothingWithinPromise = (
  window: Duration.DurationInput,
  happened: () => boolean | Promise<boolean>,
  options: WindowOptions
): Promise<void> => {
  const check = Effect.tryPromise({ try: async () => happened(), catch: (error) => error })
  const unexpected = new UnexpectedEvent({ message: `expected no ${options.message} within ${Duration.format(window)}, but it happened` })
  const once = Effect.flatMap(check, (yes) => yes ? Effect.fail(unexpected) : Effect.void)
  return run(
    once.pipe(
      Effect.repeat(Schedule.spaced(options.interval ?? DEFAULT_INTERVAL)),
      Effect.raceFirst(Effect.sleep(window)),
      Effect.zipRight(once),
      onRealClock
    )
  )
}
