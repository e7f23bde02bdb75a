/**
 * The database schema, one migration per step, the same SQL for SQLite and
 * PostgreSQL. Times are epoch milliseconds (BIGINT): they compare, bucket
 * (`started_at / 3600000`) and sort the same way in both dialects.
 */
import * as Migrator from "@effect/sql/Migrator"
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

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

export const loader: Migrator.Loader = Migrator.fromRecord({
  "1_create_requests": createRequests
})

/** Brings the connected database up to date; safe to run on every start and from several instances. */
export const run = Migrator.make({})({ loader, table: TABLE })
