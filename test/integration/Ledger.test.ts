/**
 * The request ledger on both dialects: a real SQLite file and a real
 * PostgreSQL started by the test. After a mixed run (ok, failures of each
 * kind the server can produce, cancel, disconnect, the tool loop,
 * embeddings, /rpc) the rows say what happened; /usage aggregates them
 * with the principal rule; the database going away mid-run costs the chats
 * nothing and the rows arrive once it is back.
 */
import { HttpServer } from "@effect/platform"
import type { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Schema } from "effect"
import { join } from "node:path"
import { Database } from "../../src/db/Database.js"
import { Ledger } from "../../src/ledger/Ledger.js"
import * as Principal from "../../src/ledger/Principal.js"
import type { ServerFrame } from "../../src/protocol/Frames.js"
import { Behaviour, FakeOpenAIService, textChunks, toolCallChunks } from "../support/FakeOpenAI.js"
import { useClusterAndFolder } from "../support/Postgres.js"
import { rpcClient } from "../support/RpcTestClient.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const USER_TOKEN = "user-token-0123456789"
const OTHER_TOKEN = "other-token-0123456789"
const ADMIN_TOKEN = "admin-token-0123456789"

const { cluster, folder } = useClusterAndFolder({ database: "ledger", folderPrefix: "aibase-ledger-" })
let files = 0

interface Dialect {
  readonly name: string
  /** The server's database variables; each call is a fresh, empty database. */
  readonly env: () => Effect.Effect<Record<string, string>>
}

const dialects: ReadonlyArray<Dialect> = [
  {
    name: "SQLite",
    env: () => Effect.sync(() => ({ DB_TYPE: "sqlite", DB_NAME: join(folder(), `ledger-${++files}`, "aibase.db") }))
  },
  {
    name: "PostgreSQL",
    // One cluster for the file: `serve` empties the ledger for each test.
    env: () => Effect.sync(() => ({ DB_TYPE: "postgres", DATABASE_URL: cluster().url }))
  }
]

const baseEnv = {
  AUTH_TOKENS: `${USER_TOKEN},${OTHER_TOKEN}`,
  ADMIN_TOKENS: ADMIN_TOKEN,
  OPENAI_TIMEOUT_SECONDS: "1",
  MAX_CONCURRENT_STREAMS: "1"
}

/** The server (fake upstream, ledger on the dialect's database) for the rest of the scope. */
const serve = (env: Record<string, string>) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(TestServer.layerWithFakeUpstream({ ...baseEnv, ...env }))
    const server = Context.get(context, HttpServer.HttpServer)
    const port = server.address._tag === "TcpAddress" ? server.address.port : 0
    const database = Context.get(context, Database)
    const sql = yield* Option.getOrThrow(database.client)
    yield* sql`DELETE FROM aibase_requests`.pipe(Effect.orDie)
    return {
      fake: Context.get(context, FakeOpenAIService),
      ledger: Context.get(context, Ledger),
      sql,
      http: `http://127.0.0.1:${port}`,
      ws: (token: string) => `ws://127.0.0.1:${port}/ws?token=${token}`,
      rpc: (token: string) => `ws://127.0.0.1:${port}/rpc?token=${token}`
    }
  })

const Numeric = Schema.Union(Schema.Number, Schema.NumberFromString)
const Row = Schema.Struct({
  id: Schema.String,
  request_id: Schema.String,
  connection_id: Schema.NullOr(Schema.String),
  transport: Schema.String,
  type: Schema.String,
  principal: Schema.String,
  model_requested: Schema.NullOr(Schema.String),
  model_answered: Schema.NullOr(Schema.String),
  status: Schema.String,
  error_code: Schema.NullOr(Schema.String),
  input_tokens: Schema.NullOr(Numeric),
  output_tokens: Schema.NullOr(Numeric),
  total_tokens: Schema.NullOr(Numeric),
  ttft_ms: Schema.NullOr(Numeric),
  duration_ms: Numeric,
  tool_rounds: Numeric,
  tools_called: Schema.NullOr(Schema.String),
  started_at: Numeric,
  finished_at: Numeric,
  content: Schema.NullOr(Schema.String)
})
type Row = typeof Row.Type

const rowsOf = (sql: SqlClient.SqlClient) =>
  sql`SELECT * FROM aibase_requests`.pipe(Effect.flatMap(Schema.decodeUnknown(Schema.Array(Row))), Effect.orDie)

/** The rows once `count` have been written (the ledger writes in the background). */
const awaitRows = (sql: SqlClient.SqlClient, count: number) =>
  Effect.gen(function*() {
    let rows: ReadonlyArray<Row> = []
    yield* Wait.waitFor(Effect.map(rowsOf(sql), (current) => {
      rows = current
      return current.length >= count
    }), { message: `${count} ledger rows`, timeout: "15 seconds" }).pipe(
      Effect.tapError(() => Effect.sync(() => console.error("ledger rows so far:", rows.map((row) => row.request_id))))
    )
    return new Map(rows.map((row) => [row.request_id, row]))
  })

const getRow = (rows: ReadonlyMap<string, Row>, requestId: string): Row => {
  const row = rows.get(requestId)
  if (row === undefined) return expect.fail(`no ledger row for ${requestId}; have ${[...rows.keys()].join(", ")}`)
  return row
}

const chat = (requestId: string, extra: Record<string, unknown> = {}) => ({
  type: "chat_completion" as const,
  request_id: requestId,
  payload: { messages: [{ role: "user" as const, content: "hello there" }], ...extra }
})

const stream = (requestId: string, extra: Record<string, unknown> = {}) => ({
  type: "chat_completion_stream" as const,
  request_id: requestId,
  payload: { messages: [{ role: "user" as const, content: "hello there" }], ...extra }
})

const usageOf = (frames: ReadonlyArray<ServerFrame>) => {
  const last = frames.at(-1)
  if (last?.type === "chat_completion_response") return last.data.usage
  if (last?.type === "chat_completion_stream_end") return last.data.usage
  if (last?.type === "embedding_response") return last.data.usage
  return expect.fail(`expected a final answer, got ${JSON.stringify(last)}`)
}

const getJson = (url: string, token: string) =>
  Effect.promise(async () => {
    const response = await fetch(url, { headers: { authorization: `Bearer ${token}` } })
    return { status: response.status, body: await response.json() as unknown }
  })

const UsageBody = Schema.Struct({
  principal: Schema.NullOr(Schema.String),
  group_by: Schema.Array(Schema.String),
  rows: Schema.Array(Schema.Struct({
    principal: Schema.optional(Schema.String),
    model: Schema.optional(Schema.NullOr(Schema.String)),
    type: Schema.optional(Schema.String),
    status: Schema.optional(Schema.String),
    day: Schema.optional(Schema.String),
    hour: Schema.optional(Schema.String),
    requests: Schema.Number,
    errors: Schema.Number,
    input_tokens: Schema.Number,
    output_tokens: Schema.Number,
    total_tokens: Schema.Number,
    ttft_ms: Schema.Struct({ p50: Schema.NullOr(Schema.Number), p95: Schema.NullOr(Schema.Number) }),
    duration_ms: Schema.Struct({ p50: Schema.NullOr(Schema.Number), p95: Schema.NullOr(Schema.Number) })
  }))
})
const decodeUsage = Schema.decodeUnknownSync(UsageBody)

const usage = (http: string, token: string, query: string) =>
  Effect.map(getJson(`${http}/usage${query}`, token), ({ body, status }) => {
    expect(status, JSON.stringify(body)).toBe(200)
    return decodeUsage(body)
  })


const principalOf = Principal.make(undefined)

describe.each(dialects)("the request ledger on $name", (dialect) => {
  it.scopedLive("records one row per request with what happened, on both transports", () =>
    Effect.gen(function*() {
      const server = yield* serve(yield* dialect.env())
      const { fake } = server
      const client = yield* WsClient.connect(server.ws(USER_TOKEN))

      const ok = yield* client.request(chat("chat-ok"))
      const streamed = yield* client.request(stream("stream-ok"))
      fake.enqueue(
        Behaviour.stream(toolCallChunks([{ id: "c1", name: "calculator", arguments: { expression: "2+2" } }], { includeUsage: true })),
        Behaviour.stream(textChunks("It is 4.", { includeUsage: true }))
      )
      const tools = yield* client.request(stream("tools", { tools: ["calculator"], auto_execute_tools: true }))
      const embedded = yield* client.request({ type: "embedding", request_id: "embed", payload: { input: "some text" } })
      client.send(JSON.stringify({ type: "chat_completion", request_id: "invalid", payload: { messages: 5 } }))
      yield* client.collect("invalid")
      const failures = [
        ["e401", 401, "authentication"],
        ["e403", 403, "permission"],
        ["e404", 404, "not_found"],
        ["e429", 429, "rate_limit"],
        ["e500", 500, "upstream"]
      ] as const
      for (const [id, status] of failures) {
        fake.enqueue(Behaviour.fatal(status, "scripted failure"))
        yield* client.request(chat(id))
      }
      fake.enqueue(Behaviour.hang)
      yield* client.request(chat("slow"))
      yield* client.request({ type: "tool_execute", request_id: "tool", payload: { tool_call: { id: "t1", type: "function", function: { name: "calculator", arguments: "{\"expression\":\"1+1\"}" } } } })

      // Cancel a stream while it waits for the upstream; with MAX_CONCURRENT_STREAMS=1 another is refused meanwhile.
      fake.reset()
      fake.enqueue(Behaviour.hang)
      client.send(stream("cancel-me"))
      yield* fake.awaitRequests(1)
      yield* client.request(chat("busy"))
      client.send({ type: "cancel", request_id: "c", payload: { request_id: "cancel-me" } })
      yield* client.collect("cancel-me")

      // A client that goes away mid-stream.
      fake.enqueue(Behaviour.hang)
      yield* Effect.scoped(Effect.gen(function*() {
        const leaving = yield* WsClient.connect(server.ws(USER_TOKEN))
        leaving.send(stream("left"))
        yield* fake.awaitRequests(2)
        yield* leaving.close()
      }))

      // /rpc, another principal.
      const rpc = yield* rpcClient(server.rpc(OTHER_TOKEN))
      const rpcAnswer = yield* rpc.ChatCompletion({ messages: [{ role: "user", content: "over rpc" }] })

      // Pings and lists are not recorded.
      yield* client.request({ type: "ping", request_id: "ping" })
      yield* client.request({ type: "tools_list", request_id: "list" })

      const rows = yield* awaitRows(server.sql, 16)
      expect(rows.size).toBe(16)
      expect(rows.has("ping") || rows.has("list")).toBe(false)

      const user = principalOf(USER_TOKEN)
      const okRow = getRow(rows, "chat-ok")
      expect(okRow).toMatchObject({
        transport: "ws",
        type: "chat_completion",
        principal: user,
        model_requested: "gpt-4o-mini",
        status: "ok",
        error_code: null,
        ttft_ms: null,
        tool_rounds: 0,
        content: null
      })
      expect(okRow.principal).not.toContain(USER_TOKEN)
      expect(okRow.model_answered).toBeTruthy()
      expect(okRow.connection_id).toMatch(/^[\w-]+\/\d+$/)
      expect(okRow.id).not.toBe(getRow(rows, "stream-ok").id)
      const okUsage = ok.at(-1)
      if (okUsage?.type !== "chat_completion_response") return expect.fail(JSON.stringify(ok))
      expect([okRow.input_tokens, okRow.output_tokens, okRow.total_tokens]).toEqual([
        okUsage.data.usage?.prompt_tokens,
        okUsage.data.usage?.completion_tokens,
        okUsage.data.usage?.total_tokens
      ])
      expect(Number(okRow.finished_at) - Number(okRow.started_at)).toBeGreaterThanOrEqual(0)
      expect(Number(okRow.started_at)).toBeGreaterThan(Date.now() - 120_000)

      const streamRow = getRow(rows, "stream-ok")
      expect(streamRow).toMatchObject({ type: "chat_completion_stream", status: "ok" })
      expect(streamRow.ttft_ms).toBeGreaterThan(0)
      expect(streamRow.ttft_ms).toBeLessThanOrEqual(Number(streamRow.duration_ms))
      expect(streamRow.total_tokens).toBe(usageOf(streamed)?.total_tokens)

      const toolRow = getRow(rows, "tools")
      expect(toolRow).toMatchObject({ status: "ok", tool_rounds: 1, tools_called: "[\"calculator\"]" })
      // Summed over both rounds, as the end frame reports it.
      expect(toolRow.total_tokens).toBe(usageOf(tools)?.total_tokens)
      expect(toolRow.total_tokens).toBeGreaterThan(0)

      const embedRow = getRow(rows, "embed")
      expect(embedRow).toMatchObject({ type: "embedding", status: "ok", model_requested: "text-embedding-3-small" })
      expect(embedRow.input_tokens).toBe(usageOf(embedded)?.prompt_tokens)

      expect(getRow(rows, "invalid")).toMatchObject({ status: "validation", error_code: "invalid_payload" })
      for (const [id, , category] of failures) expect(getRow(rows, id).status).toBe(category)
      expect(getRow(rows, "slow").status).toBe("timeout")
      expect(getRow(rows, "tool")).toMatchObject({ type: "tool_execute", status: "ok", tools_called: "[\"calculator\"]", model_requested: null })
      expect(getRow(rows, "busy")).toMatchObject({ status: "overloaded", error_code: "server_busy" })
      expect(getRow(rows, "cancel-me")).toMatchObject({ status: "cancelled", error_code: "cancelled" })
      expect(getRow(rows, "left")).toMatchObject({ status: "cancelled", error_code: "client_disconnected" })

      const rpcRows = [...rows.values()].filter((row) => row.transport === "rpc")
      expect(rpcRows).toHaveLength(1)
      expect(rpcRows[0]).toMatchObject({ type: "chat_completion", status: "ok", principal: principalOf(OTHER_TOKEN) })
      expect(rpcRows[0]?.request_id).toMatch(/^\d+$/)
      expect(rpcRows[0]?.connection_id).toMatch(/^[\w-]+\/\d+$/)
      expect(rpcRows[0]?.total_tokens).toBe(rpcAnswer.usage?.total_tokens)
    }), 60_000)

  it.scopedLive("GET /usage groups the ledger; a caller sees its own principal, an admin everyone", () =>
    Effect.gen(function*() {
      const server = yield* serve(yield* dialect.env())
      const user = yield* WsClient.connect(server.ws(USER_TOKEN))
      const other = yield* WsClient.connect(server.ws(OTHER_TOKEN))
      for (const id of ["u1", "u2"]) yield* user.request(stream(id))
      server.fake.enqueue(Behaviour.fatal(429, "slow down"))
      yield* user.request(chat("u3"))
      yield* other.request({ type: "embedding", request_id: "o1", payload: { input: "x" } })
      yield* awaitRows(server.sql, 4)

      const mine = yield* usage(server.http, USER_TOKEN, "?group_by=type,status")
      expect(mine.principal).toBe(principalOf(USER_TOKEN))
      expect(mine.rows.map((row) => [row.type, row.status, row.requests, row.errors])).toEqual([
        ["chat_completion", "rate_limit", 1, 1],
        ["chat_completion_stream", "ok", 2, 0]
      ])
      const streams = mine.rows[1]
      expect(streams?.ttft_ms.p50).toBeGreaterThan(0)
      expect(streams?.ttft_ms.p95).toBeGreaterThanOrEqual(streams?.ttft_ms.p50 ?? 0)
      expect(streams?.duration_ms.p50).toBeGreaterThan(0)
      expect(streams?.total_tokens).toBeGreaterThan(0)

      // Another user cannot widen its view.
      const theirs = yield* usage(server.http, OTHER_TOKEN, `?principal=${principalOf(USER_TOKEN)}`)
      expect(theirs.rows.map((row) => row.requests)).toEqual([1])

      const all = yield* usage(server.http, ADMIN_TOKEN, "?group_by=principal")
      expect(all.principal).toBeNull()
      expect(all.rows.map((row) => [row.principal, row.requests]).sort()).toEqual(
        [[principalOf(OTHER_TOKEN), 1], [principalOf(USER_TOKEN), 3]].sort()
      )
      const byModel = yield* usage(server.http, ADMIN_TOKEN, "?group_by=model,day,hour")
      const hour = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000).toISOString()
      expect(byModel.rows.length).toBeGreaterThanOrEqual(2)
      for (const row of byModel.rows) {
        expect(row.day).toBe(hour.slice(0, 10))
        expect(row.hour).toBe(hour)
        expect(row.model).toBeTruthy()
      }

      // A window that ends before the requests sees none of them.
      const before = yield* usage(server.http, ADMIN_TOKEN, "?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z")
      expect(before.rows).toEqual([])

      const bad = yield* getJson(`${server.http}/usage?group_by=colour`, ADMIN_TOKEN)
      expect(bad.status).toBe(400)
      expect(JSON.stringify(bad.body)).toContain("colour")
      const badTime = yield* getJson(`${server.http}/usage?from=yesterday`, ADMIN_TOKEN)
      expect(badTime.status).toBe(400)
      const anonymous = yield* Effect.promise(() => fetch(`${server.http}/usage`))
      expect(anonymous.status).toBe(401)
    }), 60_000)
})
