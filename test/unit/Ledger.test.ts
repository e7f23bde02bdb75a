/**
 * The ledger's parts without a server: a host's own SqlClient (migrated and
 * written to), how a request's exit becomes its status, and principals.
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit, FiberId, Layer, Redacted } from "effect"
import { Database } from "../../src/db/Database.js"
import { ShutdownFiberId } from "../../src/hub/Hub.js"
import { Ledger } from "../../src/ledger/Ledger.js"
import * as Principal from "../../src/ledger/Principal.js"
import { DisconnectFiberId, inProcess, outcomeOf } from "../../src/ledger/RequestRecord.js"
import { RateLimitError } from "../../src/protocol/Errors.js"

/** The host's own database: an in-memory SQLite it provides as SqlClient. */
const HostDatabase = SqliteClient.layer({ filename: ":memory:" })

describe("a host's own SqlClient", () => {
  it.effect("is migrated and receives the ledger's rows; /info calls it by the host's name", () =>
    Effect.gen(function*() {
      const database = yield* Database
      expect(database.type).toBe("host-sqlite")
      const ledger = yield* Ledger
      const record = ledger.begin("r1", "chat_completion", { transport: "ws", connectionId: "i/1", principal: "p_x" })
      record.requested("gpt-test", [{ role: "user", content: "hi" }])
      record.addUsage({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 })
      ledger.finish(record, Exit.void)
      yield* ledger.flush
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql`SELECT request_id, status, total_tokens, model_requested, content FROM aibase_requests`
      expect(rows).toEqual([{ request_id: "r1", status: "ok", total_tokens: 7, model_requested: "gpt-test", content: null }])
      expect(ledger.stats()).toEqual({ buffered: 0, written: 1, dropped: 0 })
    }).pipe(
      Effect.provide(Ledger.layer().pipe(Layer.provideMerge(Database.layerSqlClient("host-sqlite")), Layer.provideMerge(HostDatabase)))
    ))

  it.effect("keeps content only when asked to", () =>
    Effect.gen(function*() {
      const ledger = yield* Ledger
      const record = ledger.begin("r2", "chat_completion", inProcess)
      record.requested("m", ["the question"])
      record.onCompletion({
        id: "c",
        object: "chat.completion",
        created: 0,
        model: "m-2024",
        choices: [{ index: 0, message: { role: "assistant", content: "the answer" }, finish_reason: "stop" }]
      })
      ledger.finish(record, Exit.void)
      yield* ledger.flush
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ content: string; model_answered: string; transport: string }>`SELECT content, model_answered, transport FROM aibase_requests`
      expect(rows.map((row) => ({ ...row, content: JSON.parse(row.content) }))).toEqual([
        { content: { request: ["the question"], response: "the answer" }, model_answered: "m-2024", transport: "in_process" }
      ])
    }).pipe(
      Effect.provide(Ledger.layer({ storeContent: true }).pipe(Layer.provideMerge(Database.layerSqlClient()), Layer.provideMerge(HostDatabase)))
    ))
})

describe("outcomeOf", () => {
  it("names the status and code of every way a request ends", () => {
    expect(outcomeOf(Exit.void)).toEqual({ status: "ok", code: null })
    expect(outcomeOf(Exit.fail(new RateLimitError({ code: "rate_limited", message: "slow down" })))).toEqual({
      status: "rate_limit",
      code: "rate_limited"
    })
    expect(outcomeOf(Exit.interrupt(FiberId.none))).toEqual({ status: "cancelled", code: "cancelled" })
    expect(outcomeOf(Exit.interrupt(DisconnectFiberId))).toEqual({ status: "cancelled", code: "client_disconnected" })
    expect(outcomeOf(Exit.interrupt(ShutdownFiberId))).toEqual({ status: "unavailable", code: "shutting_down" })
    expect(outcomeOf(Exit.die(new Error("bug")))).toEqual({ status: "internal", code: "internal_error" })
    expect(outcomeOf(Exit.failCause(Cause.fail("not an AIBase error")))).toEqual({ status: "internal", code: "internal_error" })
  })
})

describe("principals", () => {
  it("are stable, distinct per token, keyed by the secret, and never contain the token", () => {
    const principal = Principal.make(undefined)
    const a = principal("token-a-0123456789")
    expect(a).toMatch(/^p_[\w-]{22}$/)
    expect(principal("token-a-0123456789")).toBe(a)
    expect(principal("token-b-0123456789")).not.toBe(a)
    expect(a).not.toContain("token-a")
    expect(Principal.make(Redacted.make("instance secret"))("token-a-0123456789")).not.toBe(a)
    expect(principal(undefined)).toBe(Principal.ANONYMOUS)
  })
})
