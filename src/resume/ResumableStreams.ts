/**
 * Resumable streams: a streamed completion that outlives its connection.
 *
 * A resumable stream runs in a fiber of its own (counted by the Hub), not
 * in the request that started it. Every frame it produces gets its `seq`,
 * is kept in memory and stored through the database in batches. Requests
 * *attach* to it: the one that started it from the beginning, a `resume`
 * from any `after`. An attachment replays what it has not seen, then
 * receives frames as they come, straight from the producer (with the
 * client's backpressure, like a plain stream), until the stream's final
 * frame.
 *
 * - A dropped connection detaches: the stream goes on, and is cancelled
 *   (its upstream call aborted) if nobody attaches within
 *   RESUME_DETACHED_SECONDS.
 * - Cancelling an attachment cancels the stream.
 * - A second attachment takes over: the first ends with `cancelled`
 *   (`resumed_elsewhere`).
 * - Unknown, expired and other principals' streams are `not_found`
 *   (`stream_not_found`), so existence does not leak.
 *
 * A stream this instance no longer holds (after a restart, or one another
 * instance ran to its end) is replayed from the database.
 */
import {
  Cause,
  Config,
  type ConfigError,
  Context,
  Duration,
  Effect,
  Exit,
  type Fiber,
  FiberId,
  HashSet,
  Layer,
  Option,
  Runtime,
  Schedule,
  Schema,
  type Scope
} from "effect"
import { randomBytes } from "node:crypto"
import { Database } from "../db/Database.js"
import { Hub, interruptedBy, isShutdown, ShutdownFiberId, stoppedAtShutdown } from "../hub/Hub.js"
import { INSTANCE } from "../ledger/Ledger.js"
import { isDisconnect } from "../ledger/RequestRecord.js"
import {
  type AiBaseError,
  AiBaseError as AiBaseErrorSchema,
  CancelledError,
  NotFoundError,
  UnavailableError,
  UpstreamError
} from "../protocol/Errors.js"
import { type ChatStreamEvent, PLAIN_EVENTS, type ResumeRequest, STREAM_END, STREAM_START } from "../protocol/Rpcs.js"
import type * as Push from "../stream/Push.js"
import * as Coordination from "./Coordination.js"
import * as StreamStore from "./StreamStore.js"

export interface ResumableStreamsOptions {
  /** How long a stream nobody is attached to keeps running (RESUME_DETACHED_SECONDS). Default 60 s. */
  readonly detached?: Duration.DurationInput | undefined
  /** How long a stream can be resumed after it ended (RESUME_RETENTION_SECONDS). Default 600 s. */
  readonly retention?: Duration.DurationInput | undefined
  /** Frames held for the database while it is slow or down. Default 100,000. */
  readonly bufferSize?: number | undefined
}

/** A kept frame; a chunk's data is encoded once, here, for the store and the socket alike. */
type Frame = ChatStreamEvent & { readonly seq: number; readonly json?: string | undefined }

interface Attachment {
  /** Unique per attach: how instances tell attachments apart. */
  readonly token: string
  /** Resolved when it is taken over: a producer waiting for this client's backpressure stops waiting. */
  readonly released: Promise<void>
  readonly release: () => void
  readonly sink: Push.Sink<ChatStreamEvent>
  /** The seq of the last frame handed to the sink. */
  cursor: number
  /** Caught up: the producer hands new frames straight to the sink. */
  live: boolean
  takenOver: boolean
  /** Wakes the attachment while it waits (the stream ended, or it was taken over). */
  notify: (() => void) | undefined
}

/** A stream this instance runs or ran, while it can still be resumed. */
interface Entry {
  readonly id: string
  readonly principal: string
  /** frames[i].seq === i + 1 */
  readonly frames: Array<Frame>
  /** Set when the stream has ended: with the error that ended it, if any. */
  final: { readonly error: AiBaseError | undefined } | undefined
  attachment: Attachment | undefined
  /** An attachment on another instance (see Coordination), by its token. */
  remoteAttachment: string | undefined
  fiber: Fiber.RuntimeFiber<void, AiBaseError> | undefined
  detachTimer: ReturnType<typeof setTimeout> | undefined
}

/** An attachment to a stream another instance runs. */
interface RemoteAttachment {
  readonly id: string
  takenOver: boolean
  /** Wakes it while it waits for frames. */
  wake: (() => void) | undefined
}

/** How long an instance's lease on the streams it runs lasts, and how often it is renewed. */
const LEASE = Duration.seconds(5)
const LEASE_RENEWAL = Duration.millis(1500)

let tokens = 0
/** Unique across instances (INSTANCE is random), and cheap. */
const newToken = () => `${INSTANCE}.${++tokens}`

/**
 * How long an ended stream stays in memory when it is also stored: long
 * enough for its last frames to reach the database, after which a resume
 * replays it from there. Without a database it stays for its retention.
 */
const HOLD_AFTER_END = Duration.seconds(5)

/** Interrupts a stream nobody attached to within RESUME_DETACHED_SECONDS. */
const AbandonedFiberId = FiberId.make(-1003, 0)

/** How long a resume on another instance looks for a stream whose row is still being written. */
const newRowWindow = Schedule.spaced(Duration.millis(50)).pipe(Schedule.upTo(Duration.seconds(2)))

const notFound = new NotFoundError({
  code: "stream_not_found",
  message: "No resumable stream with this stream_id (unknown, expired, or not yours)"
})
const resumedElsewhere = new CancelledError({
  code: "resumed_elsewhere",
  message: "The stream was resumed by another request; this one gets nothing more"
})
const cancelled = new CancelledError({ code: "cancelled", message: "The request was cancelled by the client" })
const abandoned = new CancelledError({
  code: "abandoned",
  message: "Nobody resumed the stream in time, so it was stopped"
})
const databaseUnavailable = new UnavailableError({
  code: "database_unavailable",
  message: "The stream's database cannot be read right now; retry shortly"
})

/** A read of the stream store, failing as `unavailable` when the database is down or slow. */
const fromDatabase = <A, E>(read: Effect.Effect<A, E>): Effect.Effect<A, UnavailableError> =>
  read.pipe(
    Effect.timeoutFail({ duration: Duration.seconds(5), onTimeout: () => databaseUnavailable }),
    Effect.catchAll((error) =>
      error === databaseUnavailable
        ? Effect.fail(databaseUnavailable)
        : Effect.logWarning("Could not read a resumable stream from the database", error).pipe(Effect.zipRight(Effect.fail(databaseUnavailable)))
    )
  )

const interrupted = new UpstreamError({
  code: "stream_interrupted",
  message: "The server that ran this stream stopped before it ended"
})

/**
 * The `seq` of each stream's final error, so that an attachment that ends
 * with it numbers its error frame as the stream did. Errors that are not a
 * stream's frame (not found, taken over) have none.
 */
const finalSeqs = new WeakMap<AiBaseError, number>()

const encodeError = Schema.encodeSync(AiBaseErrorSchema)
const decodeError = Schema.decodeSync(AiBaseErrorSchema)
/** A new instance of the same error. */
const copyError = (error: AiBaseError): AiBaseError => decodeError(encodeError(error))

/** The `seq` of an error that is a resumable stream's last frame. */
export const seqOfFinalError = (error: AiBaseError): number | undefined => finalSeqs.get(error)

/** The error a producer's exit leaves as the stream's last frame, or undefined when it ended well. */
const finalError = (exit: Exit.Exit<void, AiBaseError>): AiBaseError | undefined => {
  if (Exit.isSuccess(exit)) return undefined
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) return failure.value
  const interruptors = Cause.interruptors(exit.cause)
  if (isShutdown(interruptors)) return stoppedAtShutdown
  if (Cause.isInterruptedOnly(exit.cause)) return interruptedBy(interruptors, AbandonedFiberId) ? abandoned : cancelled
  return interrupted
}

export class ResumableStreams extends Context.Tag("aibase/ResumableStreams")<ResumableStreams, {
  /**
   * Runs `push` as a resumable stream of `principal`'s and attaches the
   * calling request to it from the beginning (its first frame is
   * `chat_completion_stream_start`, with the stream's id).
   */
  readonly start: (
    push: Push.PushStream<ChatStreamEvent, AiBaseError>,
    principal: string
  ) => Push.PushStream<ChatStreamEvent, AiBaseError>
  /** Attaches the calling request to a stream: its frames after `after`, then the live ones. */
  readonly resume: (request: ResumeRequest, principal: string) => Push.PushStream<ChatStreamEvent, AiBaseError>
}>() {
  static readonly make = (
    options: ResumableStreamsOptions = {}
  ): Effect.Effect<ResumableStreams["Type"], never, Hub | Database | Scope.Scope> =>
    Effect.gen(function*() {
      const hub = yield* Hub
      const database = yield* Database
      const detachedMs = Duration.toMillis(options.detached ?? Duration.seconds(60))
      const retention = Duration.decode(options.retention ?? Duration.seconds(600))
      const retentionMs = Duration.toMillis(retention)
      const coordination = yield* Coordination.make(database)
      const store = yield* StreamStore.make(database, coordination, { retention, bufferSize: options.bufferSize ?? 100_000 })
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      const streams = new Map<string, Entry>()
      /** Attachments of this instance to streams others run, by token. */
      const remotes = new Map<string, RemoteAttachment>()
      const leaseMs = Duration.toMillis(LEASE)
      const holdMs = Option.isSome(database.client) ? Math.min(Duration.toMillis(HOLD_AFTER_END), retentionMs) : retentionMs

      const startDetachTimer = (entry: Entry) => {
        const fiber = entry.fiber
        if (fiber === undefined || entry.detachTimer !== undefined) return
        entry.detachTimer = setTimeout(() => fiber.unsafeInterruptAsFork(AbandonedFiberId), detachedMs)
      }
      const stopDetachTimer = (entry: Entry) => {
        if (entry.detachTimer === undefined) return
        clearTimeout(entry.detachTimer)
        entry.detachTimer = undefined
      }

      // What other instances say about the streams (see Coordination).
      yield* coordination.onControl((message) => {
        const entry = streams.get(message.id)
        switch (message.op) {
          case "attach": {
            // Whoever attached last has the stream; every other attachment ends.
            for (const [token, remote] of remotes) {
              if (remote.id === message.id && token !== message.token) {
                remote.takenOver = true
                remote.wake?.()
              }
            }
            if (entry === undefined) return
            if (entry.attachment !== undefined && entry.attachment.token !== message.token) takeOver(entry.attachment)
            if (entry.attachment?.token !== message.token) {
              entry.attachment = undefined
              entry.remoteAttachment = message.token
              stopDetachTimer(entry)
            }
            return
          }
          case "detach":
            if (entry !== undefined && entry.remoteAttachment === message.token) {
              entry.remoteAttachment = undefined
              if (entry.attachment === undefined && entry.final === undefined) startDetachTimer(entry)
            }
            return
          case "cancel":
            // Only the attachment that has the stream may cancel it.
            if (entry !== undefined && entry.remoteAttachment === message.token) entry.fiber?.unsafeInterruptAsFork(FiberId.none)
            return
        }
      })

      // The lease on the streams this instance runs: another instance takes a lapsed lease as a crash.
      yield* Effect.suspend(() => {
        for (const entry of streams.values()) if (entry.fiber !== undefined) return store.renewLeases(Date.now() + leaseMs)
        return Effect.void
      }).pipe(Effect.repeat(Schedule.spaced(LEASE_RENEWAL)), Effect.forkScoped)

      const takeOver = (attachment: Attachment) => {
        attachment.takenOver = true
        attachment.release()
        attachment.live = false
        attachment.notify?.()
      }

      /** Replays what the attachment has not seen, then waits for the producer, until the final frame. */
      const pump = (entry: Entry, me: Attachment): Effect.Effect<void, AiBaseError> =>
        Effect.gen(function*() {
          while (true) {
            if (me.takenOver) return yield* resumedElsewhere
            while (me.cursor < entry.frames.length) {
              const frame = entry.frames[me.cursor]!
              me.cursor = frame.seq
              const wait = me.sink(frame)
              if (wait !== undefined) yield* Effect.promise(() => wait)
              if (me.takenOver) return yield* resumedElsewhere
            }
            if (entry.final !== undefined) {
              if (entry.attachment === me) entry.attachment = undefined
              if (entry.final.error !== undefined) return yield* Effect.fail(entry.final.error)
              return
            }
            // Registered and checked in one step: nothing can end the stream in between.
            yield* Effect.async<void>((resume) => {
              if (entry.final !== undefined || me.takenOver || me.cursor < entry.frames.length) return resume(Effect.void)
              me.live = true
              me.notify = () => {
                me.notify = undefined
                me.live = false
                resume(Effect.void)
              }
            })
          }
        })

      /** An attachment that leaves without the stream having ended: a drop detaches, a cancel cancels. */
      const leave = (entry: Entry, me: Attachment, interruptors: HashSet.HashSet<FiberId.FiberId>) => {
        if (entry.attachment !== me) return
        entry.attachment = undefined
        if (entry.final !== undefined || entry.fiber === undefined) return
        if (isShutdown(interruptors)) return
        if (isDisconnect(interruptors)) {
          store.flushStream(entry.id)
          return startDetachTimer(entry)
        }
        entry.fiber.unsafeInterruptAsFork(FiberId.none)
      }

      const attach = (entry: Entry, after: number): Push.PushStream<ChatStreamEvent, AiBaseError> => (sink) =>
        Effect.suspend(() => {
          let release = () => {}
          const released = new Promise<void>((resolve) => {
            release = resolve
          })
          const me: Attachment = {
            token: newToken(),
            released,
            release,
            sink,
            // A client that has every frame of a stream that ended well gets its end frame again:
            // a resume always ends with the stream's final frame.
            cursor: Math.min(after, entry.final !== undefined && entry.final.error === undefined ? entry.frames.length - 1 : entry.frames.length),
            live: false,
            takenOver: false,
            notify: undefined
          }
          if (entry.attachment !== undefined) takeOver(entry.attachment)
          entry.attachment = me
          entry.remoteAttachment = undefined
          stopDetachTimer(entry)
          // An attachment on another instance ends too.
          if (coordination.shared) coordination.send({ op: "attach", id: entry.id, token: me.token })
          return pump(entry, me).pipe(Effect.onInterrupt((interruptors) => Effect.sync(() => leave(entry, me, interruptors))))
        })

      /** Keeps a frame, stores it, and hands it to an attachment that is caught up. */
      const record = (entry: Entry) => (event: ChatStreamEvent, json?: string): Promise<void> | undefined => {
        const seq = entry.frames.length + 1
        const frame: Frame = PLAIN_EVENTS.has(event._tag)
          ? { ...event, seq, json: json ?? JSON.stringify(event.data) }
          : { ...event, seq }
        entry.frames.push(frame)
        store.putEvent(entry.id, frame)
        const attachment = entry.attachment
        if (attachment === undefined || !attachment.live) return undefined
        attachment.cursor = frame.seq
        const wait = attachment.sink(frame)
        // A client that stops reading must not hold up whoever takes the stream over.
        return wait === undefined ? undefined : Promise.race([wait, attachment.released])
      }

      const finish = (entry: Entry, row: StreamStore.StreamRow, exit: Exit.Exit<void, AiBaseError>) => {
        entry.fiber = undefined
        if (entry.detachTimer !== undefined) clearTimeout(entry.detachTimer)
        const error = finalError(exit)
        if (error !== undefined) {
          // A fresh instance per stream: the shared constants must not carry one stream's seq.
          const own = copyError(error)
          finalSeqs.set(own, entry.frames.length + 1)
          store.putError(entry.id, entry.frames.length + 1, own)
          entry.final = { error: own }
        } else {
          entry.final = { error }
        }
        store.flushStream(entry.id)
        const now = Date.now()
        store.putStream({ ...row, lease_until: now, finished_at: now })
        entry.attachment?.notify?.()
        // Out of memory once its frames are in the database (checked again if the writer is behind).
        const release = () => {
          if (holdMs < retentionMs && store.pending() > 0) return void setTimeout(release, holdMs).unref()
          streams.delete(entry.id)
        }
        setTimeout(release, holdMs).unref()
      }

      const start = (
        push: Push.PushStream<ChatStreamEvent, AiBaseError>,
        principal: string
      ): Push.PushStream<ChatStreamEvent, AiBaseError> =>
      (sink) =>
        Effect.suspend(() => {
          const id = randomBytes(18).toString("base64url")
          const now = Date.now()
          const entry: Entry = {
            id,
            principal,
            frames: [],
            final: undefined,
            attachment: undefined,
            remoteAttachment: undefined,
            fiber: undefined,
            detachTimer: undefined
          }
          const row: StreamStore.StreamRow = {
            id,
            principal,
            instance: INSTANCE,
            started_at: now,
            resumable_until: now + retentionMs,
            lease_until: now + leaseMs,
            finished_at: null
          }
          streams.set(id, entry)
          store.putStream(row)
          record(entry)({
            _tag: STREAM_START,
            data: { stream_id: id, resumable_until: new Date(row.resumable_until).toISOString() }
          })
          const fiber = runFork(push(record(entry)))
          entry.fiber = fiber
          // Counted like a request: the drain waits for it, and stops it at the end of the grace period.
          if (!hub.unsafeTrack(fiber)) fiber.unsafeInterruptAsFork(ShutdownFiberId)
          fiber.addObserver((exit) => finish(entry, row, exit))
          return attach(entry, 0)(sink)
        })

      /**
       * A stream this instance does not hold, from the database: one that
       * ended (here before a restart, or elsewhere), or one another instance
       * is running, whose new frames are announced (see Coordination) until
       * it ends, or its lease lapses because that instance died.
       */
      const remote = (row: StreamStore.StreamRow, after: number): Push.PushStream<ChatStreamEvent, AiBaseError> => (sink) =>
        Effect.suspend(() => {
          const token = newToken()
          const me: RemoteAttachment = { id: row.id, takenOver: false, wake: undefined }
          remotes.set(token, me)
          if (coordination.shared && row.finished_at === null) coordination.send({ op: "attach", id: row.id, token })
          let cursor = after
          let current = row
          return Effect.gen(function*() {
            const watch = yield* coordination.watchFrames(row.id)
            while (true) {
              const frames = yield* fromDatabase(store.frames(row.id, cursor))
              for (const frame of frames) {
                if (me.takenOver) return yield* resumedElsewhere
                if (frame._tag === "error") {
                  finalSeqs.set(frame.error, frame.seq)
                  return yield* Effect.fail(frame.error)
                }
                cursor = frame.event.seq
                const wait = sink(frame.event)
                if (wait !== undefined) yield* Effect.promise(() => wait)
                if (frame.event._tag === STREAM_END) return
              }
              if (me.takenOver) return yield* resumedElsewhere
              if (current.finished_at !== null) {
                // Nothing after `after`: the client has it all, so it gets the final frame again.
                const last = cursor === after ? (yield* fromDatabase(store.frames(row.id, 0))).at(-1) : undefined
                if (last?._tag === "event" && last.event._tag === STREAM_END) {
                  const wait = sink(last.event)
                  if (wait !== undefined) yield* Effect.promise(() => wait)
                  return
                }
                if (last?._tag === "error") {
                  finalSeqs.set(last.error, last.seq)
                  return yield* Effect.fail(last.error)
                }
                // Stored in full, without an end: the stream never had one.
                return yield* interrupted
              }
              const now = Date.now()
              if (current.lease_until < now) return yield* interrupted
              yield* Effect.raceFirst(
                watch.next(Duration.millis(current.lease_until - now + 250)),
                Effect.async<void>((resume) => {
                  me.wake = () => resume(Effect.void)
                })
              )
              const found = yield* fromDatabase(store.find(row.id))
              if (Option.isNone(found)) return yield* interrupted
              current = found.value
            }
          }).pipe(
            Effect.onInterrupt((interruptors) =>
              Effect.sync(() => {
                if (!coordination.shared || me.takenOver || isShutdown(interruptors)) return
                coordination.send({ op: isDisconnect(interruptors) ? "detach" : "cancel", id: row.id, token })
              })
            ),
            Effect.ensuring(Effect.sync(() => remotes.delete(token))),
            Effect.scoped
          )
        })

      const resume = (request: ResumeRequest, principal: string): Push.PushStream<ChatStreamEvent, AiBaseError> =>
      (sink) =>
        Effect.suspend(() => {
          const after = request.after ?? 0
          const entry = streams.get(request.stream_id)
          if (entry !== undefined) return entry.principal === principal ? attach(entry, after)(sink) : Effect.fail(notFound)
          const row = fromDatabase(store.find(request.stream_id)).pipe(
            Effect.flatMap(Option.match({ onNone: () => Effect.fail(notFound), onSome: Effect.succeed }))
          )
          // Another instance sends a stream's id as soon as it starts, while its row is being
          // written: a resume that arrives first looks again for a moment before it is not found.
          const found = coordination.shared ? Effect.retry(row, { schedule: newRowWindow, while: (error) => error === notFound }) : row
          return Effect.flatMap(found, (stored) => stored.principal === principal ? remote(stored, after)(sink) : Effect.fail(notFound))
        })

      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          for (const entry of streams.values()) {
            if (entry.detachTimer !== undefined) clearTimeout(entry.detachTimer)
            entry.fiber?.unsafeInterruptAsFork(ShutdownFiberId)
          }
        })
      )

      return ResumableStreams.of({ start, resume })
    })

  static readonly layer = (options: ResumableStreamsOptions = {}): Layer.Layer<ResumableStreams, never, Hub | Database> =>
    Layer.scoped(ResumableStreams, ResumableStreams.make(options))

  /** RESUME_DETACHED_SECONDS and RESUME_RETENTION_SECONDS. */
  static readonly config: Config.Config<ResumableStreamsOptions> = Config.all({
    detached: Config.number("RESUME_DETACHED_SECONDS").pipe(
      Config.validate({ message: "Expected a positive number of seconds", validation: (n) => n > 0 }),
      Config.withDefault(60),
      Config.map(Duration.seconds)
    ),
    retention: Config.number("RESUME_RETENTION_SECONDS").pipe(
      Config.validate({ message: "Expected a positive number of seconds", validation: (n) => n > 0 }),
      Config.withDefault(600),
      Config.map(Duration.seconds)
    )
  })

  static readonly layerConfig: Layer.Layer<ResumableStreams, ConfigError.ConfigError, Hub | Database> = Layer.unwrapEffect(
    Effect.map(ResumableStreams.config, ResumableStreams.layer)
  )
}
