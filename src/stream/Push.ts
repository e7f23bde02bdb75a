/**
 * Push streams: the hot path's form of a stream. A producer runs to completion
 * as one Effect and hands each element to a synchronous `Sink`, so an element
 * costs a function call rather than a trip through the fiber runtime per
 * stage. The sink applies backpressure by returning a promise, which the
 * producer awaits before it produces more.
 *
 * Streamed completions travel this way from the upstream to the socket;
 * `toStream` and `fromStream` convert at the edges where an Effect `Stream`
 * is wanted (/rpc, the public API, test doubles).
 */
import { Cause, Effect, Exit, Fiber, HashSet, Mailbox, Stream } from "effect"

/**
 * Takes one element. `undefined` means "go on"; a promise means "wait for it
 * before the next element" (the consumer is full). A producer that parsed
 * the element from JSON it could send on as it is may pass that text as
 * `json`, so a consumer that writes JSON need not stringify it again.
 */
export type Sink<A> = (element: A, json?: string) => Promise<void> | undefined

/** A producer that pushes every element into the sink, then succeeds (or fails). */
export type PushStream<A, E = never, R = never> = (sink: Sink<A>) => Effect.Effect<void, E, R>

/**
 * How long a producer may keep the event loop before it lets other work
 * run. Data that arrives in a burst (a whole TCP read of server-sent events)
 * is otherwise processed in one chain of microtasks, and every other client,
 * /health and signal handling wait for it.
 */
const TURN_BUDGET_MS = 5

let turnStartedAt = 0
let turnMarked = false
const endTurn = () => {
  turnMarked = false
}

/**
 * A promise to await when the current turn of the event loop has run past
 * its budget (it resolves on the next turn); undefined otherwise. Cheap
 * enough to call per element: one clock read.
 */
export const yieldIfBusy = (): Promise<void> | undefined => {
  const now = performance.now()
  if (!turnMarked) {
    // The first call of a turn marks its start; the check phase ends it.
    turnMarked = true
    turnStartedAt = now
    setImmediate(endTurn)
    return undefined
  }
  return now - turnStartedAt < TURN_BUDGET_MS ? undefined : new Promise((resolve) => setImmediate(resolve))
}

/** Elements buffered between a push stream and a pulling consumer. */
const BUFFER = 64

/**
 * A push stream as an Effect Stream (one Mailbox between them, bounded).
 * When the consumer is interrupted, the producer is interrupted by the
 * same FiberId, so it can tell a disconnect from a cancel (a resumable
 * stream outlives one, not the other).
 */
export const toStream = <A, E, R>(push: PushStream<A, E, R>): Stream.Stream<A, E, R> =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const mailbox = yield* Mailbox.make<A, E>(BUFFER)
    const sink: Sink<A> = (element) =>
      mailbox.unsafeOffer(element) ? undefined : Effect.runPromise(Effect.asVoid(mailbox.offer(element)))
    const producer = yield* push(sink).pipe(
      Effect.onExit((exit) => mailbox.done(Exit.asVoid(exit))),
      Effect.forkDaemon
    )
    yield* Effect.addFinalizer((exit) => {
      const by = Exit.isFailure(exit) ? HashSet.values(Cause.interruptors(exit.cause)).next() : undefined
      return by === undefined || by.done === true ? Fiber.interrupt(producer) : Fiber.interruptAs(producer, by.value)
    })
    return Mailbox.toStream(mailbox)
  }))

/** An Effect Stream as a push stream: each element is pushed as it is pulled. */
export const fromStream = <A, E, R>(stream: Stream.Stream<A, E, R>): PushStream<A, E, R> => (sink) =>
  Stream.runForEach(stream, (element) => {
    const wait = sink(element)
    return wait === undefined ? Effect.void : Effect.promise(() => wait)
  })
