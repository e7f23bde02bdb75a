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
  Layer,
  Option,
  type ParseResult
} from "effect"
import type { SqlError } from "@effect/sql/SqlError"
import { randomBytes, randomUUID } from "node:crypto"
import * as BatchWriter from "../db/BatchWriter.js"
import { Database } from "../db/Database.js"
import type { AiBaseRpc } from "../protocol/Rpcs.js"
import { type Caller, RequestRecord } from "./RequestRecord.js"
import * as Usage from "./Usage.js"

export interface LedgerOptions {
  /** Keep each request's messages and final content (STORE_CONTENT). Default false. */
  readonly storeContent?: boolean | undefined
  /** Rows held while the database is slow or down (LEDGER_BUFFER_SIZE). Default 10,000. */
  readonly bufferSize?: number | undefined
  /** How long shutdown waits for the last rows to be written. Default 5 seconds. */
  readonly flushTimeout?: Duration.DurationInput | undefined
}

export type LedgerStats = BatchWriter.Stats

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

      const writer = yield* BatchWriter.make<Row>({
        name: "request ledger",
        client,
        write: insert,
        bufferSize,
        flushTimeout
      })

      return Ledger.of({
        enabled: true,
        storesContent: storeContent,
        begin,
        finish: (record, exit) => writer.offer(rowOf(record, exit)),
        flush: writer.flush,
        usage: (query) => Effect.flatMap(client, (sql) => Usage.query(sql, query)),
        stats: writer.stats
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
  const outcome = record.finish(exit)
  const duration = record.durationMs
  const ttft = record.timeToFirstTokenMs
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
    ttft_ms: ttft === null ? null : roundMs(ttft),
    duration_ms: roundMs(duration),
    tool_rounds: record.toolRounds,
    tools_called: record.toolsCalled.length === 0 ? null : JSON.stringify(record.toolsCalled),
    started_at: record.startedAt,
    finished_at: record.startedAt + Math.round(duration),
    content: record.content === undefined ? null : JSON.stringify(record.content)
  }
}

const roundMs = (ms: number): number => Math.round(ms * 100) / 100
