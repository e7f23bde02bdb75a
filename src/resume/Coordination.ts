/**
 * How instances sharing a PostgreSQL database coordinate resumable streams,
 * with PostgreSQL's own LISTEN/NOTIFY (no extra server):
 *
 * - `aibase_stream_frames`: the instance running a stream announces the
 *   streams whose frames it has just stored; a resumer on another instance
 *   then reads them.
 * - `aibase_stream_control`: attachments announce themselves (so that the
 *   previous one, wherever it is, ends with `resumed_elsewhere`, and the
 *   running instance stops its detach timer), detach (so that it starts
 *   it), and cancel (so that it stops the stream).
 *
 * Without PostgreSQL there is one instance, and all of it is a no-op.
 */
import { Duration, Effect, Option, Runtime, Schema, type Scope, Stream } from "effect"
import type { DatabaseShape } from "../db/Database.js"

const FRAMES = "aibase_stream_frames"
const CONTROL = "aibase_stream_control"

export const Control = Schema.Struct({
  op: Schema.Literal("attach", "detach", "cancel"),
  /** The stream. */
  id: Schema.String,
  /** The attachment (unique per attach). */
  token: Schema.String
})
export type Control = typeof Control.Type

const decodeControl = Schema.decodeUnknownOption(Schema.parseJson(Control))

const chunksOf = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> => {
  const chunks: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += size) chunks.push(items.slice(i, i + size))
  return chunks
}

export interface Coordination {
  /** Whether other instances can share streams (PostgreSQL). */
  readonly shared: boolean
  /** Tells the other instances that frames of these streams were stored. */
  readonly announceFrames: (ids: ReadonlySet<string>) => Effect.Effect<void>
  /**
   * Watches stream `id` for announcements, for as long as the current scope
   * lives. Subscribe before reading what is stored, so that an announcement
   * between the read and the wait is not missed.
   */
  readonly watchFrames: (id: string) => Effect.Effect<FramesWatch, never, Scope.Scope>
  /** Sends a control message (to every instance, this one included). */
  readonly send: (message: Control) => void
  /** Handles control messages for as long as the current scope lives. */
  readonly onControl: (handler: (message: Control) => void) => Effect.Effect<void, never, Scope.Scope>
}

export interface FramesWatch {
  /** Returns at once if frames were announced since the last call; otherwise waits for one, or `timeout`. */
  readonly next: (timeout: Duration.Duration) => Effect.Effect<void>
}

const none: Coordination = {
  shared: false,
  announceFrames: () => Effect.void,
  watchFrames: () => Effect.succeed({ next: (timeout) => Effect.sleep(timeout) }),
  send: () => {},
  onControl: () => Effect.void
}

export const make = (database: DatabaseShape): Effect.Effect<Coordination, never, Scope.Scope> =>
  Effect.gen(function*() {
    if (Option.isNone(database.channels)) return none
    const channels = database.channels.value
    /** The watches of each stream: a flag raised by each announcement, and the wake-up of a waiting `next`. */
    interface Watch {
      announced: boolean
      wake: (() => void) | undefined
    }
    const watches = new Map<string, Set<Watch>>()
    const handlers = new Set<(message: Control) => void>()

    // One listener per channel for the whole instance; they reconnect after a failure.
    const listen = (channel: string, onMessage: (payload: string) => void) =>
      Effect.flatMap(channels, (pg) => Stream.runForEach(pg.listen(channel), (payload) => Effect.sync(() => onMessage(payload)))).pipe(
        Effect.catchAll((error) => Effect.logDebug(`Listening on ${channel} failed; listening again`, error.message)),
        Effect.zipRight(Effect.sleep(Duration.seconds(1))),
        Effect.forever,
        Effect.forkScoped
      )
    yield* listen(FRAMES, (payload) => {
      for (const id of payload.split(" ")) {
        for (const watch of watches.get(id) ?? []) {
          watch.announced = true
          watch.wake?.()
        }
      }
    })
    yield* listen(CONTROL, (payload) => {
      const message = decodeControl(payload)
      if (Option.isSome(message)) for (const handler of handlers) handler(message.value)
    })

    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    return {
      shared: true,
      // Space-separated ids, as many as fit in one NOTIFY payload (under 8,000 bytes).
      announceFrames: (ids) =>
        Effect.flatMap(channels, (pg) => Effect.forEach(chunksOf([...ids], 200), (chunk) => pg.notify(FRAMES, chunk.join(" ")), { discard: true })).pipe(
          Effect.catchAll((error) => Effect.logDebug("Could not announce stored frames", error.message))
        ),
      watchFrames: (id) =>
        Effect.acquireRelease(
          Effect.sync(() => {
            const watch: Watch = { announced: false, wake: undefined }
            const set = watches.get(id) ?? new Set()
            set.add(watch)
            watches.set(id, set)
            return watch
          }),
          (watch) =>
            Effect.sync(() => {
              const set = watches.get(id)
              set?.delete(watch)
              if (set?.size === 0) watches.delete(id)
            })
        ).pipe(Effect.map((watch): FramesWatch => ({
          next: (timeout) =>
            Effect.async<void>((resume) => {
              if (watch.announced) {
                watch.announced = false
                return resume(Effect.void)
              }
              watch.wake = () => {
                watch.wake = undefined
                watch.announced = false
                resume(Effect.void)
              }
              return Effect.sync(() => {
                watch.wake = undefined
              })
            }).pipe(Effect.timeoutOption(timeout), Effect.asVoid)
        }))),
      send: (message) => {
        runFork(
          Effect.flatMap(channels, (pg) => pg.notify(CONTROL, JSON.stringify(message))).pipe(
            Effect.catchAll((error) => Effect.logWarning("Could not reach the other instances", error.message))
          )
        )
      },
      onControl: (handler) =>
        Effect.acquireRelease(
          Effect.sync(() => handlers.add(handler)),
          () => Effect.sync(() => handlers.delete(handler))
        ).pipe(Effect.asVoid)
    }
  })
