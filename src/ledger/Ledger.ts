/**
 * The request ledger: one row per request (see RequestRecord), written to
 * the Database in the background. Recording a request is a push onto a
 * bounded in-memory buffer; a writer fiber inserts what has gathered in
 * batches, retries with backoff while the database is unreachable, and the
 * buffer is flushed when the ledger shuts down. A chat never waits for, or
 * fails because of, the database: when the buffer is full, rows are dropped,
 * counted and reported in a warning.
 */
import type { SqlClient } from "@effect/sql"
import {
  Config,
  type ConfigError,
  Context,
  Duration,
  Effect,
  type Exit,
  Fiber,
  Layer,
  Option,
  type ParseResult,
  Schedule
} from "effect"
import type { SqlError } from "@effect/sql/SqlError"
import { randomBytes, randomUUID } from "node:crypto"
import { Database } from "../db/Database.js"
import type { AiBaseRpc } from "../protocol/Rpcs.js"
import { type Caller, outcomeOf, RequestRecord } from "./RequestRecord.js"
import * as Usage from "./Usage.js"

export interface LedgerOptions {
  /** Keep each request's messages and final content (STORE_CONTENT). Default false. */
  readonly storeContent?: boolean | undefined
  /** Rows held while the database is slow or down (LEDGER_BUFFER_SIZE). Default 10,000. */
  readonly bufferSize?: number | undefined
  /** How long shutdown waits for the last rows to be written. Default 5 seconds. */
  readonly flushTimeout?: Duration.DurationInput | undefined
}

export interface LedgerStats {
  /** Rows waiting to be written. */
  readonly buffered: number
  readonly written: number
  /** Rows lost because the buffer was full. */
  readonly dropped: number
}

/** The database does not record requests (DB_TYPE=none). */
export class UsageNotRecorded {
  readonly _tag = "UsageNotRecorded"
}

export interface LedgerShape {
  /** Whether rows are stored (false with DB_TYPE=none). */
  readonly enabled: boolean
  readonly storesContent: boolean
  /** Starts the record of a request; finish it with `finish`. */
  readonly begin: (requestId: string, type: string, caller: Caller) => RequestRecord
  /** Ends a record with its request's exit and queues its row (never blocks). */
  readonly finish: (record: RequestRecord, exit: Exit.Exit<unknown, unknown>) => void
  /** Writes every buffered row now. */
  readonly flush: Effect.Effect<void, SqlError>
  readonly usage: (
    query: Usage.UsageQuery
  ) => Effect.Effect<ReadonlyArray<Usage.UsageRow>, UsageNotRecorded | SqlError | ParseResult.ParseError>
  readonly stats: () => LedgerStats
}

type Row = Record<string, string | number | null>

/** The requests the ledger records: those that reach a model or a tool (pings and lists do not). */
export const RECORDED_RPCS: ReadonlySet<AiBaseRpc["_tag"]> = new Set([
  "ChatCompletion",
  "ChatCompletionStream",
  "Embedding",
  "ToolExecute"
])

/** Rows per INSERT: well under PostgreSQL's 65,535 parameters at 20 columns. */
const BATCH = 500

/**
 * How long the writer lets rows gather after the first one arrives. An
 * INSERT costs about the same for one row as for fifty; writing each row
 * on its own would cost a busy server more than the rest of the request.
 */
const LINGER = Duration.millis(250)

/** Retries of a failed write: quick at first, then every 5 seconds, for as long as it takes. */
const retrying = Schedule.exponential(Duration.millis(100)).pipe(Schedule.union(Schedule.spaced(Duration.seconds(5))))

const insert = (sql: SqlClient.SqlClient, rows: ReadonlyArray<Row>) =>
  // A retried batch may have been committed already: its rows are skipped.
  sql`INSERT INTO aibase_requests ${sql.insert(rows)} ON CONFLICT (id) DO NOTHING`

export class Ledger extends Context.Tag("aibase/Ledger")<Ledger, LedgerShape>() {
  static readonly make = (options: LedgerOptions = {}) =>
    Effect.gen(function*() {
      const database = yield* Database
      const storeContent = options.storeContent === true
      const bufferSize = options.bufferSize ?? 10_000
      const flushTimeout = options.flushTimeout ?? Duration.seconds(5)
      const begin = (requestId: string, type: string, caller: Caller) =>
        new RequestRecord(requestId, type, caller, storeContent)

      if (Option.isNone(database.client)) {
        yield* Effect.logInfo("DB_TYPE=none: usage is not recorded")
        return Ledger.of({
          enabled: false,
          storesContent: false,
          begin,
          finish: () => {},
          flush: Effect.void,
          usage: () => Effect.fail(new UsageNotRecorded()),
          stats: () => ({ buffered: 0, written: 0, dropped: 0 })
        })
      }
      const client = database.client.value

      const buffer: Array<Row> = []
      let written = 0
      let dropped = 0
      let droppedUnreported = 0
      const wake = yield* Effect.makeLatch(false)
      const batchFull = yield* Effect.makeLatch(false)
      const overflowed = yield* Effect.makeLatch(false)

      const finish = (record: RequestRecord, exit: Exit.Exit<unknown, unknown>): void => {
        if (buffer.length >= bufferSize) {
          dropped++
          droppedUnreported++
          overflowed.unsafeOpen()
        } else {
          buffer.push(rowOf(record, exit))
          if (buffer.length >= BATCH) batchFull.unsafeOpen()
        }
        wake.unsafeOpen()
      }

      /** Writes the buffer's first rows in one INSERT; they leave the buffer once written. */
      const writeBatch = (sql: SqlClient.SqlClient) =>
        Effect.suspend(() => {
          const batch = buffer.slice(0, BATCH)
          return Effect.map(insert(sql, batch), () => {
            buffer.splice(0, batch.length)
            written += batch.length
          })
        })

      const flushWith = (sql: SqlClient.SqlClient) =>
        Effect.whileLoop({ while: () => buffer.length > 0, body: () => writeBatch(sql), step: () => {} })

      const reportDropped = Effect.suspend(() => {
        if (droppedUnreported === 0) return Effect.void
        const count = droppedUnreported
        droppedUnreported = 0
        return Effect.logWarning("The ledger's buffer is full: requests were not recorded").pipe(
          Effect.annotateLogs({ dropped: count, dropped_total: dropped, buffer_size: bufferSize })
        )
      })

      let failing = false
      const writer = Effect.gen(function*() {
        while (true) {
          yield* wake.await
          yield* Effect.raceFirst(Effect.sleep(LINGER), batchFull.await)
          yield* wake.close
          yield* batchFull.close
          // Waits here while a database that was not required at startup is still unreachable.
          const sql = yield* client
          yield* flushWith(sql).pipe(
            Effect.tapError((error) => {
              if (failing) return Effect.void
              failing = true
              return Effect.logWarning("Could not write the request ledger; retrying in the background", error.message).pipe(
                Effect.annotateLogs({ buffered: buffer.length })
              )
            }),
            Effect.retry(retrying),
            Effect.zipRight(Effect.suspend(() => {
              if (!failing) return Effect.void
              failing = false
              return Effect.logInfo("The request ledger is being written again").pipe(Effect.annotateLogs({ written }))
            }))
          )
        }
      })

      // Drops are reported on their own fiber (the writer may be waiting for the
      // database), at most one warning a second.
      const reporter = Effect.forever(
        overflowed.await.pipe(
          Effect.zipRight(overflowed.close),
          Effect.zipRight(reportDropped),
          Effect.zipRight(Effect.sleep(Duration.seconds(1)))
        )
      )

      const fiber = yield* Effect.forkDaemon(Effect.all([writer, reporter], { concurrency: 2, discard: true }))
      yield* Effect.addFinalizer(() =>
        Effect.gen(function*() {
          yield* Fiber.interrupt(fiber)
          yield* reportDropped
          if (buffer.length === 0) return
          // Finalizers are uninterruptible: the timeout must be able to stop a write that hangs.
          const flushed = yield* client.pipe(
            Effect.flatMap(flushWith),
            Effect.interruptible,
            Effect.timeoutOption(flushTimeout),
            Effect.either
          )
          if (buffer.length > 0) {
            yield* Effect.logError("Shutting down with request ledger rows not written").pipe(
              Effect.annotateLogs({ lost: buffer.length, reason: flushed._tag === "Left" ? flushed.left.message : "timed out" })
            )
          }
        })
      )

      return Ledger.of({
        enabled: true,
        storesContent: storeContent,
        begin,
        finish,
        flush: Effect.flatMap(client, flushWith),
        usage: (query) => Effect.flatMap(client, (sql) => Usage.query(sql, query)),
        stats: () => ({ buffered: buffer.length, written, dropped })
      })
    })

  static readonly layer = (options: LedgerOptions = {}): Layer.Layer<Ledger, never, Database> =>
    Layer.scoped(Ledger, Ledger.make(options))

  /** STORE_CONTENT and LEDGER_BUFFER_SIZE. */
  static readonly config: Config.Config<LedgerOptions> = Config.all({
    storeContent: Config.boolean("STORE_CONTENT").pipe(Config.withDefault(false)),
    bufferSize: Config.integer("LEDGER_BUFFER_SIZE").pipe(
      Config.validate({ message: "Expected a positive integer", validation: (n) => n > 0 }),
      Config.withDefault(10_000)
    )
  })

  static readonly layerConfig: Layer.Layer<Ledger, ConfigError.ConfigError, Database> = Layer.unwrapEffect(
    Effect.map(Ledger.config, Ledger.layer)
  )
}

/** This process, in connection ids (which are otherwise only unique per process). */
export const INSTANCE = randomBytes(6).toString("base64url")

const rowOf = (record: RequestRecord, exit: Exit.Exit<unknown, unknown>): Row => {
  const outcome = outcomeOf(exit)
  const now = performance.now()
  return {
    id: randomUUID(),
    request_id: record.requestId,
    connection_id: record.caller.connectionId,
    transport: record.caller.transport,
    type: record.type,
    principal: record.caller.principal,
    model_requested: record.modelRequested,
    model_answered: record.modelAnswered,
    status: outcome.status,
    error_code: outcome.code,
    input_tokens: record.inputTokens,
    output_tokens: record.outputTokens,
    total_tokens: record.totalTokens,
    ttft_ms: record.firstTokenAt === undefined ? null : roundMs(record.firstTokenAt - record.startedHr),
    duration_ms: roundMs(now - record.startedHr),
    tool_rounds: record.toolRounds,
    tools_called: record.toolsCalled.length === 0 ? null : JSON.stringify(record.toolsCalled),
    started_at: record.startedAt,
    finished_at: record.startedAt + Math.round(now - record.startedHr),
    content: record.content === undefined ? null : JSON.stringify(record.content)
  }
}

const roundMs = (ms: number): number => Math.round(ms * 100) / 100
