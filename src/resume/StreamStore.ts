/**
 * Where resumable streams are kept in the database: a row per stream
 * (`aibase_streams`) and a row per frame (`aibase_stream_frames`), written
 * in batches in the background (see BatchWriter), read back when a stream
 * is resumed that this instance no longer holds in memory, and swept once
 * their retention is over. Without a database (DB_TYPE=none) nothing is
 * stored and streams live in memory only.
 */
import type { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Duration, Effect, Either, Option, ParseResult, Schedule, Schema, type Scope } from "effect"
import * as BatchWriter from "../db/BatchWriter.js"
import type { DatabaseShape } from "../db/Database.js"
import { INSTANCE } from "../ledger/Ledger.js"
import type { Coordination } from "./Coordination.js"
import { AiBaseError } from "../protocol/Errors.js"
import { type ChatStreamEvent, ChatStreamEvent as ChatStreamEventSchema, PLAIN_EVENTS } from "../protocol/Rpcs.js"

export type StreamRow = {
  readonly id: string
  readonly principal: string
  readonly instance: string
  readonly started_at: number
  readonly resumable_until: number
  readonly lease_until: number
  readonly finished_at: number | null
}

/** A frame on its way to the database: `data` is already JSON. */
type PendingFrame = { readonly stream_id: string; readonly seq: number; readonly type: string; readonly data: string }

/** A stored frame: an event, or the error that ended the stream. */
export type StoredFrame =
  | { readonly _tag: "event"; readonly event: ChatStreamEvent & { readonly seq: number } }
  | { readonly _tag: "error"; readonly seq: number; readonly error: AiBaseError }

type Op =
  | { readonly _tag: "stream"; readonly row: StreamRow }
  | { readonly _tag: "frame"; readonly frame: PendingFrame }
  /** Consecutive frames of one stream, gathered before they were offered. */
  | { readonly _tag: "segment"; readonly frames: ReadonlyArray<PendingFrame> }

/**
 * On one instance a stream's frames are gathered in memory and written as
 * one row per this many (and at its end, or when its client drops): nobody
 * else waits for them, and a row per few frames costs more than the rest
 * of a chunk's work. With several instances every batch is written.
 */
const SEGMENT = 64

/** The type stored for the error that ends a failed stream. */
const ERROR = "error"

const encodeEvent = Schema.encodeUnknownSync(ChatStreamEventSchema)
const decodeEvent = Schema.decodeUnknownEither(ChatStreamEventSchema)
const encodeError = Schema.encodeSync(AiBaseError)
const decodeError = Schema.decodeUnknownEither(AiBaseError)

const Numeric = Schema.Union(Schema.Number, Schema.NumberFromString)
const StreamRowSchema = Schema.Struct({
  id: Schema.String,
  principal: Schema.String,
  instance: Schema.String,
  started_at: Numeric,
  resumable_until: Numeric,
  lease_until: Numeric,
  finished_at: Schema.NullOr(Numeric)
})
const SegmentRow = Schema.Struct({ frames: Schema.String })
const Segment = Schema.parseJson(Schema.Array(Schema.Struct({ s: Schema.Int, t: Schema.String, d: Schema.Unknown })))
const decodeSegment = Schema.decodeUnknownEither(Segment)
const decodeStreamRows = Schema.decodeUnknown(Schema.Array(StreamRowSchema))
const decodeSegmentRows = Schema.decodeUnknown(Schema.Array(SegmentRow))

/**
 * The frame's data in JSON: chunks as they are (their decoded form is their
 * JSON form; the stream may have encoded it already), other events encoded.
 */
export const dataOf = (event: ChatStreamEvent & { readonly json?: string | undefined }): string =>
  event.json ?? JSON.stringify(PLAIN_EVENTS.has(event._tag) ? event.data : encodeEvent(event).data)

const toStoredFrame = (frame: { readonly s: number; readonly t: string; readonly d: unknown }): Either.Either<StoredFrame, ParseResult.ParseError> => {
  if (frame.t === ERROR) return Either.map(decodeError(frame.d), (error) => ({ _tag: "error" as const, seq: frame.s, error }))
  return Either.map(
    decodeEvent({ _tag: frame.t, data: frame.d, seq: frame.s }),
    (event) => ({ _tag: "event" as const, event: { ...event, seq: frame.s } })
  )
}

/** A stream's frames of one batch as one row (their data is JSON already: no second encoding). */
const segmentOf = (frames: ReadonlyArray<PendingFrame>) => ({
  stream_id: frames[0]!.stream_id,
  first_seq: frames[0]!.seq,
  last_seq: frames[frames.length - 1]!.seq,
  frames: `[${frames.map((frame) => `{"s":${frame.seq},"t":${JSON.stringify(frame.type)},"d":${frame.data}}`).join(",")}]`
})

export interface StreamStore {
  readonly putStream: (row: StreamRow) => void
  readonly putEvent: (streamId: string, event: ChatStreamEvent & { readonly seq: number; readonly json?: string | undefined }) => void
  readonly putError: (streamId: string, seq: number, error: AiBaseError) => void
  /** Hands the frames gathered for a stream to the writer now (its end, or its client dropped). */
  readonly flushStream: (streamId: string) => void
  /** A stream's row, if stored and not past its retention. */
  readonly find: (id: string) => Effect.Effect<Option.Option<StreamRow>, SqlError | ParseResult.ParseError>
  /** A stream's frames after `after`, in order. */
  readonly frames: (id: string, after: number) => Effect.Effect<ReadonlyArray<StoredFrame>, SqlError | ParseResult.ParseError>
  /** Extends this instance's lease on the streams it runs (another instance takes a lapsed lease as a crash). */
  readonly renewLeases: (until: number) => Effect.Effect<void>
  /** Frames and rows not yet written. */
  readonly pending: () => number
  /** Writes everything buffered now. */
  readonly flush: Effect.Effect<void, SqlError>
}

const write = (coordination: Coordination, sql: SqlClient.SqlClient, batch: ReadonlyArray<Op>) =>
  Effect.gen(function*() {
    // The latest row of each stream, and its frames as segments of consecutive ones.
    const streams = new Map<string, StreamRow>()
    const pending = new Map<string, Array<PendingFrame>>()
    const segments: Array<ReturnType<typeof segmentOf>> = []
    for (const op of batch) {
      if (op._tag === "stream") {
        streams.set(op.row.id, op.row)
        continue
      }
      if (op._tag === "segment") {
        segments.push(segmentOf(op.frames))
        continue
      }
      const run = pending.get(op.frame.stream_id)
      if (run !== undefined && run[run.length - 1]!.seq + 1 === op.frame.seq) run.push(op.frame)
      else {
        if (run !== undefined) segments.push(segmentOf(run))
        pending.set(op.frame.stream_id, [op.frame])
      }
    }
    for (const run of pending.values()) segments.push(segmentOf(run))
    // One transaction: a reader that sees a stream finished sees its last frame too.
    yield* sql.withTransaction(Effect.gen(function*() {
      if (streams.size > 0) {
        yield* sql`INSERT INTO aibase_streams ${sql.insert([...streams.values()])}
          ON CONFLICT (id) DO UPDATE SET finished_at = excluded.finished_at,
            lease_until = CASE WHEN excluded.lease_until > aibase_streams.lease_until
              THEN excluded.lease_until ELSE aibase_streams.lease_until END`
      }
      if (segments.length > 0) {
        yield* sql`INSERT INTO aibase_stream_frames ${sql.insert(segments)} ON CONFLICT (stream_id, first_seq) DO NOTHING`
      }
    }))
    yield* coordination.announceFrames(new Set([...pending.keys(), ...streams.keys()]))
  })

export const make = (
  database: DatabaseShape,
  coordination: Coordination,
  options: { readonly retention: Duration.Duration; readonly bufferSize: number }
): Effect.Effect<StreamStore, never, Scope.Scope> =>
  Effect.gen(function*() {
    if (Option.isNone(database.client)) {
      return {
        putStream: () => {},
        putEvent: () => {},
        putError: () => {},
        flushStream: () => {},
        find: () => Effect.succeed(Option.none()),
        frames: () => Effect.succeed([]),
        renewLeases: () => Effect.void,
        pending: () => 0,
        flush: Effect.void
      }
    }
    const client = database.client.value
    const retentionMs = Duration.toMillis(options.retention)
    const writer = yield* BatchWriter.make<Op>({
      name: "resumable streams' frames",
      client,
      write: (sql, batch) => write(coordination, sql, batch),
      bufferSize: options.bufferSize,
      // Stored frames are what a resumer on another instance waits for; on one
      // instance they only need to be there after a restart.
      linger: Duration.millis(coordination.shared ? 50 : 250)
    })

    // Streams that ended more than their retention ago go, with their frames.
    const sweep = Effect.gen(function*() {
      const sql = yield* client
      const before = Date.now() - retentionMs
      // Also streams that never finished and whose lease lapsed long ago (their instance died).
      yield* sql`DELETE FROM aibase_stream_frames WHERE stream_id IN (SELECT id FROM aibase_streams
        WHERE (finished_at IS NOT NULL AND finished_at < ${before}) OR (finished_at IS NULL AND lease_until < ${before}))`
      yield* sql`DELETE FROM aibase_streams
        WHERE (finished_at IS NOT NULL AND finished_at < ${before}) OR (finished_at IS NULL AND lease_until < ${before})`
    }).pipe(Effect.catchAll((error) => Effect.logWarning("Could not sweep expired resumable streams", error.message)))
    yield* sweep.pipe(
      Effect.repeat(Schedule.spaced(Duration.min(options.retention, Duration.minutes(1)))),
      Effect.forkScoped
    )

    const gathered = new Map<string, Array<PendingFrame>>()
    const flushStream = (streamId: string) => {
      const frames = gathered.get(streamId)
      if (frames === undefined) return
      gathered.delete(streamId)
      writer.offer({ _tag: "segment", frames })
    }
    const put = (frame: PendingFrame) => {
      if (coordination.shared) return writer.offer({ _tag: "frame", frame })
      const frames = gathered.get(frame.stream_id)
      if (frames === undefined) gathered.set(frame.stream_id, [frame])
      else if (frames.push(frame) >= SEGMENT) flushStream(frame.stream_id)
    }

    return {
      // With several instances a new stream is written at once: a resumer elsewhere must find it.
      putStream: (row) => writer.offer({ _tag: "stream", row }, coordination.shared && row.finished_at === null),
      putEvent: (streamId, event) => put({ stream_id: streamId, seq: event.seq, type: event._tag, data: dataOf(event) }),
      putError: (streamId, seq, error) =>
        put({ stream_id: streamId, seq, type: ERROR, data: JSON.stringify(encodeError(error)) }),
      flushStream,
      find: (id) =>
        Effect.gen(function*() {
          const sql = yield* client
          const rows = yield* sql`SELECT * FROM aibase_streams WHERE id = ${id}`.pipe(Effect.flatMap(decodeStreamRows))
          const row = rows[0]
          if (row === undefined) return Option.none()
          if (row.finished_at !== null && row.finished_at + retentionMs < Date.now()) return Option.none()
          return Option.some(row)
        }),
      frames: (id, after) =>
        Effect.gen(function*() {
          const sql = yield* client
          const rows = yield* sql`SELECT frames FROM aibase_stream_frames
            WHERE stream_id = ${id} AND last_seq > ${after} ORDER BY first_seq`.pipe(Effect.flatMap(decodeSegmentRows))
          const frames: Array<StoredFrame> = []
          for (const row of rows) {
            for (const frame of yield* decodeSegment(row.frames)) {
              if (frame.s > after) frames.push(yield* toStoredFrame(frame))
            }
          }
          return frames
        }),
      renewLeases: (until) =>
        Effect.flatMap(client, (sql) =>
          sql`UPDATE aibase_streams SET lease_until = ${until} WHERE instance = ${INSTANCE} AND finished_at IS NULL`).pipe(
            Effect.asVoid,
            Effect.catchAll((error) => Effect.logWarning("Could not renew the leases of resumable streams", error.message))
          ),
      pending: () => writer.stats().buffered + gathered.size,
      flush: writer.flush
    }
  })
