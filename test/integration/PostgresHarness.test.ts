/**
 * The throwaway PostgreSQL cluster of test/support/Postgres.ts, driven through
 * @effect/sql-pg's PgClient: it serves queries, goes away (queries fail, they
 * do not hang), comes back on the same port with the same data, and is
 * destroyed. Fails, rather than skips, where PostgreSQL is not installed.
 */
import { PgClient } from "@effect/sql-pg"
import { Effect, Exit, Layer, ManagedRuntime, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type PostgresCluster, requirePostgres, startPostgres } from "../support/Postgres.js"

// Without connectTimeout, building the layer against a server that accepts but
// never answers hangs for good: its connect is an uninterruptible acquire, so
// neither its own 5 s timeout nor Effect.timeout around it can end it.
const pgLayer = (url: string) => PgClient.layer({ url: Redacted.make(url), connectTimeout: "2 seconds" })
const makeRuntime = (url: string) => ManagedRuntime.make(pgLayer(url))

const selectOne = Effect.flatMap(PgClient.PgClient, (sql) => sql<{ readonly one: number }>`SELECT 1 AS one`)

describe("PostgreSQL test cluster with PgClient", () => {
  let cluster: PostgresCluster | undefined
  let runtime: ReturnType<typeof makeRuntime> | undefined

  const started = (): PostgresCluster => {
    if (cluster === undefined) throw new Error("the cluster did not start (see beforeAll)")
    return cluster
  }
  const client = (): ReturnType<typeof makeRuntime> => {
    runtime ??= makeRuntime(started().url)
    return runtime
  }

  beforeAll(async () => {
    requirePostgres()
    cluster = await startPostgres({ database: "harness" })
  })

  // Also when a test failed: no postmaster may outlive the file.
  afterAll(async () => {
    try {
      await runtime?.dispose()
    } finally {
      await cluster?.destroy()
    }
  })

  it("serves PgClient queries on 127.0.0.1", async () => {
    const c = started()
    expect(c.url).toBe(`postgres://postgres@127.0.0.1:${c.port}/harness`)
    expect(await client().runPromise(selectOne)).toEqual([{ one: 1 }])
    await client().runPromise(
      Effect.flatMap(PgClient.PgClient, (sql) =>
        Effect.zipRight(sql`CREATE TABLE kept (note text)`, sql`INSERT INTO kept VALUES ('before the restart')`))
    )
  })

  it("while it is stopped, a query fails instead of hanging", async () => {
    await started().stop()
    // Bounded either way: a failure (connection refused) or the timeout both pass.
    const exit = await client().runPromiseExit(selectOne.pipe(Effect.timeout("5 seconds")))
    expect(Exit.isFailure(exit)).toBe(true)
  })

  it("after start(), the same client works again and the data is still there", async () => {
    await started().start()
    expect(await client().runPromise(selectOne)).toEqual([{ one: 1 }])
    const rows = await client().runPromise(Effect.flatMap(PgClient.PgClient, (sql) => sql<{ readonly note: string }>`SELECT note FROM kept`))
    expect(rows).toEqual([{ note: "before the restart" }])
  })

  it("after destroy(), nothing listens: building PgClient.layer fails, since it connects while built", async () => {
    const { url } = started()
    await runtime?.dispose()
    runtime = undefined
    await started().destroy()
    const exit = await Effect.runPromiseExit(Effect.scoped(Layer.build(pgLayer(url))).pipe(Effect.timeout("5 seconds")))
    expect(Exit.isFailure(exit)).toBe(true)
    if (Exit.isFailure(exit)) expect(String(exit.cause)).toContain("PgClient: Failed to connect")
  })
})
