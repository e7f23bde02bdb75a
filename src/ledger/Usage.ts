/**
 * `GET /usage`: aggregates of the request ledger, computed in SQL on both
 * dialects. Percentiles use `percentile_cont`: PostgreSQL's ordered-set
 * aggregate, and SQLite's function of the same name (built into the SQLite
 * that better-sqlite3 ships, 3.47 and later).
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, ParseResult, Schema } from "effect"

export const GROUPS = ["principal", "model", "type", "status", "day", "hour"] as const
export type Group = typeof GROUPS[number]

export interface UsageQuery {
  /** Epoch milliseconds, inclusive. */
  readonly from: number
  /** Epoch milliseconds, exclusive. */
  readonly to: number
  readonly groupBy: ReadonlyArray<Group>
  /** Only this principal's requests; undefined for everyone's. */
  readonly principal: string | undefined
}

export interface Percentiles {
  readonly p50: number | null
  readonly p95: number | null
}

export interface UsageRow {
  readonly principal?: string
  readonly model?: string | null
  readonly type?: string
  readonly status?: string
  readonly day?: string
  readonly hour?: string
  readonly requests: number
  readonly errors: number
  readonly input_tokens: number
  readonly output_tokens: number
  readonly total_tokens: number
  readonly ttft_ms: Percentiles
  readonly duration_ms: Percentiles
}

const HOUR_MS = 3_600_000
const DAY_MS = 86_400_000

/** Each group's SQL expression: a fixed list, never text from the request. */
const EXPRESSIONS: Readonly<Record<Group, string>> = {
  principal: "principal",
  model: "COALESCE(model_answered, model_requested)",
  type: "type",
  status: "status",
  day: `(started_at / ${DAY_MS})`,
  hour: `(started_at / ${HOUR_MS})`
}

/** Numbers as the drivers return them: PostgreSQL sends BIGINT and SUM results as strings. */
const Numeric = Schema.Union(
  Schema.Number,
  Schema.NumberFromString,
  Schema.transform(Schema.BigIntFromSelf, Schema.Number, {
    strict: true,
    decode: (n) => Number(n),
    encode: (n) => BigInt(Math.round(n))
  })
)
const NullableNumeric = Schema.NullOr(Numeric)
const Text = Schema.NullOr(Schema.String)

const Aggregates = Schema.Struct({
  requests: Numeric,
  errors: NullableNumeric,
  input_tokens: NullableNumeric,
  output_tokens: NullableNumeric,
  total_tokens: NullableNumeric,
  ttft_p50: NullableNumeric,
  ttft_p95: NullableNumeric,
  duration_p50: NullableNumeric,
  duration_p95: NullableNumeric,
  g_principal: Schema.optional(Text),
  g_model: Schema.optional(Text),
  g_type: Schema.optional(Text),
  g_status: Schema.optional(Text),
  g_day: Schema.optional(NullableNumeric),
  g_hour: Schema.optional(NullableNumeric)
})
const decodeRows = Schema.decodeUnknown(Schema.Array(Aggregates))

const round = (value: number | null): number | null => value === null ? null : Math.round(value * 10) / 10

/** Runs the aggregate; the rows come back in group order. */
export const query = (
  sql: SqlClient.SqlClient,
  query: UsageQuery
): Effect.Effect<ReadonlyArray<UsageRow>, SqlError | ParseResult.ParseError> => {
  const percentile = (column: string, p: number) =>
    sql.onDialectOrElse({
      pg: () => `percentile_cont(${p}) WITHIN GROUP (ORDER BY ${column})`,
      orElse: () => `percentile_cont(${column}, ${p})`
    })
  const groups = query.groupBy.map((group) => `${EXPRESSIONS[group]} AS g_${group}`)
  const keys = query.groupBy.map((group) => EXPRESSIONS[group])
  const select = [
    ...groups,
    "COUNT(*) AS requests",
    "SUM(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END) AS errors",
    "SUM(input_tokens) AS input_tokens",
    "SUM(output_tokens) AS output_tokens",
    "SUM(total_tokens) AS total_tokens",
    `${percentile("ttft_ms", 0.5)} AS ttft_p50`,
    `${percentile("ttft_ms", 0.95)} AS ttft_p95`,
    `${percentile("duration_ms", 0.5)} AS duration_p50`,
    `${percentile("duration_ms", 0.95)} AS duration_p95`
  ].join(", ")
  const where = query.principal === undefined
    ? sql`started_at >= ${query.from} AND started_at < ${query.to}`
    : sql`started_at >= ${query.from} AND started_at < ${query.to} AND principal = ${query.principal}`
  const grouping = keys.length === 0 ? sql.literal("") : sql.literal(`GROUP BY ${keys.join(", ")} ORDER BY ${keys.join(", ")}`)
  return sql`SELECT ${sql.literal(select)} FROM aibase_requests WHERE ${where} ${grouping}`.pipe(
    Effect.flatMap(decodeRows),
    Effect.map((rows) =>
      rows
        // Aggregating no rows without GROUP BY still yields one row of zeros and nulls.
        .filter((row) => row.requests > 0)
        .map((row): UsageRow => ({
          ...(row.g_principal !== undefined ? { principal: row.g_principal ?? "" } : {}),
          ...(row.g_model !== undefined ? { model: row.g_model } : {}),
          ...(row.g_type !== undefined ? { type: row.g_type ?? "" } : {}),
          ...(row.g_status !== undefined ? { status: row.g_status ?? "" } : {}),
          ...(row.g_day !== undefined ? { day: new Date((row.g_day ?? 0) * DAY_MS).toISOString().slice(0, 10) } : {}),
          ...(row.g_hour !== undefined ? { hour: new Date((row.g_hour ?? 0) * HOUR_MS).toISOString() } : {}),
          requests: row.requests,
          errors: row.errors ?? 0,
          input_tokens: row.input_tokens ?? 0,
          output_tokens: row.output_tokens ?? 0,
          total_tokens: row.total_tokens ?? 0,
          ttft_ms: { p50: round(row.ttft_p50), p95: round(row.ttft_p95) },
          duration_ms: { p50: round(row.duration_p50), p95: round(row.duration_p95) }
        }))
    )
  )
}
