/**
 * The database schema, one migration per step, the same SQL for SQLite and
 * PostgreSQL. Times are epoch milliseconds (BIGINT): they compare, bucket
 * (`started_at / 3600000`) and sort the same way in both dialects.
 */
import * as Migrator from "@effect/sql/Migrator"
import { SqlClient } from "@effect/sql"
import { Duration, Effect, Schedule } from "effect"

/** The table the Migrator keeps its bookkeeping in (ours are all `aibase_`). */
export const TABLE = "aibase_migrations"

const createRequests = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE IF NOT EXISTS aibase_requests (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    connection_id TEXT,
    transport TEXT NOT NULL,
    type TEXT NOT NULL,
    principal TEXT NOT NULL,
    model_requested TEXT,
    model_answered TEXT,
    status TEXT NOT NULL,
    error_code TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    total_tokens INTEGER,
    ttft_ms DOUBLE PRECISION,
    duration_ms DOUBLE PRECISION NOT NULL,
    tool_rounds INTEGER NOT NULL,
    tools_called TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    content TEXT
  )`
  yield* sql`CREATE INDEX IF NOT EXISTS aibase_requests_started_at ON aibase_requests (started_at)`
  yield* sql`CREATE INDEX IF NOT EXISTS aibase_requests_principal ON aibase_requests (principal, started_at)`
})

const createStreams = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  // A resumable stream: who may resume it, which instance runs it (and its
  // lease on it), and when it ended.
  yield* sql`CREATE TABLE IF NOT EXISTS aibase_streams (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    instance TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    resumable_until BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    finished_at BIGINT
  )`
  yield* sql`CREATE INDEX IF NOT EXISTS aibase_streams_finished_at ON aibase_streams (finished_at)`
  // Its frames, a segment of consecutive ones per row (a row per frame
  // costs more than the rest of a chunk's work): a JSON array of
  // {"s": seq, "t": type, "d": data}, an error's data for the last frame of
  // a failed stream.
  yield* sql`CREATE TABLE IF NOT EXISTS aibase_stream_frames (
    stream_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    frames TEXT NOT NULL,
    PRIMARY KEY (stream_id, first_seq)
  )`
})

export const loader: Migrator.Loader = Migrator.fromRecord({
  "1_create_requests": createRequests,
  "2_create_streams": createStreams
})

/**
 * Brings the connected database up to date; safe to run on every start and
 * from several instances. Instances starting together can collide in
 * PostgreSQL's catalog (`CREATE TABLE IF NOT EXISTS` is not atomic); the
 * retry then finds the work done.
 */
export const run = Migrator.make({})({ loader, table: TABLE }).pipe(
  Effect.retry({ times: 3, schedule: Schedule.spaced(Duration.millis(200)) })
)
