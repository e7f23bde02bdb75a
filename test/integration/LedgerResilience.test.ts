/**
 * The ledger when the database misbehaves: a PostgreSQL that stops in the
 * middle of a run (the chats go on; the rows arrive once it is back), a
 * buffer that overflows, rows still buffered at shutdown, a database that
 * is down at startup (one clear line, or a background connection with
 * DB_REQUIRED=false), a restart that keeps the data, STORE_CONTENT, and
 * DB_TYPE=none.
 */
import { HttpServer } from "@effect/platform"
import type { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted, Schema, Scope, Exit } from "effect"
import { join } from "node:path"
import { Database } from "../../src/db/Database.js"
import { Ledger } from "../../src/ledger/Ledger.js"
import { FakeOpenAIService } from "../support/FakeOpenAI.js"
import { freePort } from "../support/Ports.js"
import { useClusterAndFolder } from "../support/Postgres.js"
import * as ServerProcess from "../support/ServerProcess.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const { cluster, folder } = useClusterAndFolder({ database: "resilience", folderPrefix: "aibase-ledger-resilience-" })

/** The cluster running, whatever an earlier test left it in. */
const running = Effect.promise(async () => {
  const pg = cluster()
  await pg.start().catch(() => undefined)
  return pg
})

/** A server in its own scope, closed by the caller (to test what shutdown does). */
const openServer = (env: Record<string, string>) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(TestServer.layerWithFakeUpstream(env), scope)
    const server = Context.get(context, HttpServer.HttpServer)
    const port = server.address._tag === "TcpAddress" ? server.address.port : 0
    return {
      close: Scope.close(scope, Exit.void),
      fake: Context.get(context, FakeOpenAIService),
      ledger: Context.get(context, Ledger),
      database: Context.get(context, Database),
      http: `http://127.0.0.1:${port}`,
      ws: `ws://127.0.0.1:${port}/ws`
    }
  })

/** The test's own client of the PostgreSQL cluster (not the server's). */
const pgClient = (url: string) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(PgClient.layer({ url: Redacted.make(url), connectTimeout: "2 seconds" }))
    return Context.get(context, PgClient.PgClient) as SqlClient.SqlClient
  })

const Count = Schema.Struct({ n: Schema.Union(Schema.Number, Schema.NumberFromString) })
const countRows = (sql: SqlClient.SqlClient) =>
  sql`SELECT COUNT(*) AS n FROM aibase_requests`.pipe(
    Effect.flatMap(Schema.decodeUnknown(Schema.Array(Count))),
    Effect.map((rows) => rows[0]?.n ?? 0),
    Effect.orDie
  )

const chat = (requestId: string, content = "hello") => ({
  type: "chat_completion" as const,
  request_id: requestId,
  payload: { messages: [{ role: "user" as const, content }] }
})

/** Sends `count` chats one after the other; every one must succeed. */
const chats = (client: WsClient.WsClient, prefix: string, count: number) =>
  Effect.forEach(Array.from({ length: count }, (_, i) => `${prefix}-${i}`), (id) =>
    Effect.map(client.request(chat(id), "5 seconds"), (frames) => {
      expect(frames.at(-1)?.type, JSON.stringify(frames)).toBe("chat_completion_response")
    }), { discard: true })

describe("the ledger when PostgreSQL stops and starts again", () => {
  it.scopedLive("chats go on while it is down; the rows arrive once it is back; overflow is counted", () =>
    Effect.gen(function*() {
      const pg = yield* running
      const sql = yield* pgClient(pg.url)
      const server = yield* openServer({ DB_TYPE: "postgres", DATABASE_URL: pg.url, LEDGER_BUFFER_SIZE: "8" })
      yield* Effect.addFinalizer(() => server.close)
      yield* sql`DELETE FROM aibase_requests`.pipe(Effect.orDie)
      const client = yield* WsClient.connect(server.ws)

      yield* chats(client, "before", 2)
      yield* Wait.waitFor(Effect.map(countRows(sql), (n) => n === 2), { message: "the first two rows" })

      yield* Effect.promise(() => pg.stop())
      const started = Date.now()
      yield* chats(client, "during", 10)
      // Ten chats with the database gone take no longer than they would with it.
      expect(Date.now() - started).toBeLessThan(5_000)
      yield* Wait.waitFor(() => server.ledger.stats().dropped === 2, { message: "two rows dropped from a full buffer" })
      expect(server.ledger.stats().buffered).toBe(8)

      yield* Effect.promise(() => pg.start())
      yield* Wait.waitFor(Effect.map(countRows(sql), (n) => n === 10), {
        message: "the buffered rows written once PostgreSQL is back",
        timeout: "20 seconds"
      })
      expect(server.ledger.stats()).toMatchObject({ buffered: 0, dropped: 2 })
    }), 60_000)

  it.scopedLive("rows still buffered at shutdown are written before the ledger stops", () =>
    Effect.gen(function*() {
      const pg = yield* running
      const sql = yield* pgClient(pg.url)
      const server = yield* openServer({ DB_TYPE: "postgres", DATABASE_URL: pg.url })
      yield* sql`DELETE FROM aibase_requests`.pipe(Effect.orDie)
      const client = yield* WsClient.connect(server.ws)
      yield* Effect.promise(() => pg.stop())
      yield* chats(client, "late", 3)
      expect(server.ledger.stats().buffered).toBe(3)
      yield* Effect.promise(() => pg.start())
      // Closing now: the writer may still be waiting out its backoff, so it is the shutdown flush that writes them.
      yield* client.close()
      yield* server.close
      expect(yield* countRows(sql)).toBe(3)
    }), 60_000)

  it.scopedLive("with DB_REQUIRED=false the server starts without the database and records once it is up", () =>
    Effect.gen(function*() {
      const pg = yield* running
      const sql = yield* pgClient(pg.url)
      yield* sql`DELETE FROM aibase_requests`.pipe(Effect.orDie)
      yield* Effect.promise(() => pg.stop())
      const server = yield* openServer({ DB_TYPE: "postgres", DATABASE_URL: pg.url, DB_REQUIRED: "false" })
      yield* Effect.addFinalizer(() => server.close)
      const client = yield* WsClient.connect(server.ws)
      yield* chats(client, "early", 2)
      expect(server.ledger.stats().buffered).toBe(2)
      yield* Effect.promise(() => pg.start())
      yield* Wait.waitFor(Effect.map(countRows(sql), (n) => n === 2), {
        message: "rows written after the late connection",
        timeout: "20 seconds"
      })
    }), 60_000)
})

describe("the database at startup and across restarts", () => {
  it.live("an unreachable PostgreSQL fails startup with one clear line, without credentials", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const failed = yield* Effect.flip(Effect.tryPromise(() =>
        ServerProcess.start({
          env: { DB_TYPE: "postgres", DB_HOST: "127.0.0.1", DB_PORT: String(port), DB_USER: "aibase", DB_PASSWORD: "pw-SECRET-123" }
        })
      ))
      const message = String(failed.error)
      expect(message).toMatch(/exited with code 1/)
      const lines = message.split("\n").filter((line) => line.trim().length > 0)
      // "the server exited with code 1", then the server's own output: one line.
      expect(lines).toHaveLength(2)
      expect(lines[1]).toContain(`Could not connect to PostgreSQL at 127.0.0.1:${port}/aibase`)
      expect(message).not.toContain("pw-SECRET-123")
    }), 30_000)

  it.scopedLive("with DB_REQUIRED=false and no database, the process starts, warns, and reports rows a full buffer dropped", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      const server = yield* Effect.acquireRelease(
        Effect.promise(() =>
          ServerProcess.start({
            env: {
              DB_TYPE: "postgres",
              DATABASE_URL: `postgres://aibase:pw-SECRET-789@127.0.0.1:${port}/aibase`,
              DB_REQUIRED: "false",
              LEDGER_BUFFER_SIZE: "1",
              LLM_PROVIDER: "offline",
              OFFLINE_WORD_DELAY_MS: "0"
            }
          })
        ),
        (server) => Effect.promise(() => ServerProcess.stop(server))
      )
      yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* WsClient.connect(`ws://127.0.0.1:${server.port}/ws`)
        yield* chats(client, "unrecorded", 3)
      }))
      // One buffered row, two dropped: reported in warnings of at most one a second.
      const warnings = () =>
        server.output().split("\n").filter((line) => line.includes("buffer is full")).map((line): unknown => JSON.parse(line))
      yield* Wait.waitFor(() => JSON.stringify(warnings()).includes(`"dropped_total":2`), { message: "the overflow warnings" })
      for (const warning of warnings()) expect(warning).toMatchObject({ logLevel: "WARN", annotations: { buffer_size: 1 } })
      const lines = server.output().split("\n")
      expect(lines.some((line) => line.includes(`Could not connect to PostgreSQL at 127.0.0.1:${port}/aibase`))).toBe(true)
      expect(server.output()).not.toContain("pw-SECRET-789")
    }), 30_000)

  it.live("a SQLite database keeps its rows across a restart; /info names the type, never credentials", () =>
    Effect.gen(function*() {
      const file = join(folder(), "restart", "aibase.db")
      const env = { DB_TYPE: "sqlite", DB_NAME: file }
      const first = yield* openServer(env)
      const client = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* WsClient.connect(first.ws)
        yield* chats(client, "first-life", 3)
        return client
      }))
      expect(client.frames.length).toBeGreaterThan(0)
      yield* first.close

      const second = yield* openServer(env)
      const info = yield* Effect.promise(() => fetch(`${second.http}/info`).then((r) => r.json()))
      expect(info).toMatchObject({ database: { type: "sqlite", usage_recorded: true, store_content: false } })
      const usage = yield* Effect.promise(() => fetch(`${second.http}/usage`).then((r) => r.json()))
      expect(usage).toMatchObject({ rows: [{ requests: 3, errors: 0 }] })
      yield* second.close
    }), 30_000)

  it.live("/info shows a PostgreSQL database by type only", () =>
    Effect.gen(function*() {
      const pg = yield* running
      const url = pg.url.replace("postgres@", "postgres:pw-SECRET-456@")
      const server = yield* openServer({ DB_TYPE: "postgres", DATABASE_URL: url })
      const text = yield* Effect.promise(() => fetch(`${server.http}/info`).then((r) => r.text()))
      expect(JSON.parse(text)).toMatchObject({ database: { type: "postgres", usage_recorded: true } })
      expect(text).not.toContain("pw-SECRET-456")
      expect(text).not.toContain(String(pg.port))
      yield* server.close
    }), 30_000)

  it.live("STORE_CONTENT=true keeps the messages and the final content; by default neither is stored", () =>
    Effect.gen(function*() {
      for (const store of [true, false]) {
        const server = yield* openServer({ DB_TYPE: "sqlite", DB_NAME: join(folder(), `content-${store}.db`), STORE_CONTENT: String(store) })
        yield* Effect.scoped(Effect.gen(function*() {
          const client = yield* WsClient.connect(server.ws)
          yield* client.request(chat("keep", "a private question"))
        }))
        yield* server.ledger.flush
        const sql = yield* Option.getOrThrow(server.database.client)
        const rows = yield* sql<{ content: string | null }>`SELECT content FROM aibase_requests`.pipe(Effect.orDie)
        if (store) {
          const content: unknown = JSON.parse(rows[0]?.content ?? "null")
          expect(content).toMatchObject({
            request: [{ role: "user", content: "a private question" }],
            response: expect.stringContaining("a private question")
          })
        } else {
          expect(rows).toEqual([{ content: null }])
        }
        yield* server.close
      }
    }), 30_000)

  it.live("DB_TYPE=none stores nothing and says so in /info and /usage", () =>
    Effect.gen(function*() {
      const server = yield* openServer({ DB_TYPE: "none" })
      const info = yield* Effect.promise(() => fetch(`${server.http}/info`).then((r) => r.json()))
      expect(info).toMatchObject({ database: { type: "none", usage_recorded: false } })
      const usage = yield* Effect.promise(() => fetch(`${server.http}/usage`))
      expect(usage.status).toBe(404)
      expect(yield* Effect.promise(() => usage.json())).toMatchObject({ error: "usage_not_recorded" })
      expect(Option.isNone(server.database.client)).toBe(true)
      yield* server.close
    }), 30_000)
})
