/**
 * Resumable streams across instances: two AIBase processes sharing one
 * PostgreSQL (started by the test) and one fake upstream. A stream started
 * on A continues on B, live; when A is killed, B's resumer learns it from
 * A's lapsed lease (`stream_interrupted`) within seconds, never hanging.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type { ServerFrame } from "../../src/protocol/Frames.js"
import * as FakeOpenAI from "../support/FakeOpenAI.js"
import { type PostgresCluster, startPostgres } from "../support/Postgres.js"
import * as ServerProcess from "../support/ServerProcess.js"
import * as TestServer from "../support/TestServer.js"
import * as WsClient from "../support/WsClient.js"

const TEXT = "Alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa."

let postgres: PostgresCluster | undefined
let fake: FakeOpenAI.FakeOpenAI | undefined

beforeAll(async () => {
  ;[postgres, fake] = await Promise.all([startPostgres({ database: "shared" }), FakeOpenAI.start()])
}, 60_000)

afterAll(async () => {
  await fake?.close()
  await postgres?.destroy()
})

const startInstance = Effect.acquireRelease(
  Effect.promise(() => {
    if (postgres === undefined || fake === undefined) throw new Error("the cluster or the fake did not start")
    return ServerProcess.start({
      env: {
        DB_TYPE: "postgres",
        DATABASE_URL: postgres.url,
        LLM_PROVIDER: "openai",
        OPENAI_API_KEY: TestServer.TEST_API_KEY,
        OPENAI_BASE_URL: fake.baseUrl,
        OPENAI_MAX_RETRIES: "0",
        LOG_LEVEL: "info"
      }
    })
  }),
  (server) => Effect.promise(() => ServerProcess.stop(server, "SIGKILL"))
)

const connect = (server: ServerProcess.ServerProcess) => WsClient.connect(`ws://127.0.0.1:${server.port}/ws`)

const seqOf = (frame: ServerFrame | undefined): number =>
  frame !== undefined && "seq" in frame && typeof frame.seq === "number" ? frame.seq : expect.fail(`no seq: ${JSON.stringify(frame)}`)

const textOf = (frames: ReadonlyArray<ServerFrame>): string =>
  frames.map((frame) => frame.type === "chat_completion_stream_chunk" ? frame.data.choices[0]?.delta.content ?? "" : "").join("")

const streamIdOf = (frames: ReadonlyArray<ServerFrame>): string => {
  const start = frames[0]
  return start?.type === "chat_completion_stream_start" ? start.data.stream_id : expect.fail(JSON.stringify(start))
}

const begin = (server: ServerProcess.ServerProcess, chunks: number) =>
  Effect.scoped(Effect.gen(function*() {
    const client = yield* connect(server)
    client.send({
      type: "chat_completion_stream",
      request_id: "r1",
      payload: { messages: [{ role: "user", content: "go" }], resumable: true }
    })
    return yield* client.waitForFrames(
      (frames) => frames.filter((frame) => frame.type === "chat_completion_stream_chunk").length >= chunks,
      { message: `${chunks} chunks` }
    )
  }))

describe("two instances sharing PostgreSQL", () => {
  it.scopedLive("a stream started on A, dropped, resumes on B and the rest arrives live", () =>
    Effect.gen(function*() {
      const [a, b] = yield* Effect.all([startInstance, startInstance], { concurrency: 2 })
      fake!.reset()
      fake!.enqueue(FakeOpenAI.Behaviour.stream(FakeOpenAI.textChunks(TEXT, { includeUsage: true }), { delayMs: 200 }))
      const seen = yield* begin(a, 3)
      const streamId = streamIdOf(seen)

      const client = yield* connect(b)
      client.send({ type: "resume", request_id: "r2", payload: { stream_id: streamId, after: seqOf(seen.at(-1)) } })
      const first = yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "r2"))
      // Still streaming upstream when B's resumer got its first frame: the rest comes live, not from a finished record.
      expect(fake!.requests[0]?.finished).toBe(false)
      expect(seqOf(first)).toBe(seqOf(seen.at(-1)) + 1)
      const rest = yield* client.collect("r2", "15 seconds")
      expect(rest.map(seqOf)).toEqual(rest.map((_, i) => seqOf(seen.at(-1)) + 1 + i))
      expect(rest.filter((frame) => frame.type === "error" || frame.type === "chat_completion_stream_end")).toHaveLength(1)
      expect(rest.at(-1)?.type).toBe("chat_completion_stream_end")
      expect(textOf([...seen, ...rest])).toBe(TEXT)
      expect(fake!.requests).toHaveLength(1)
    }), 60_000)

  it.scopedLive("A killed mid-stream: B's resumer gets the stored frames, then stream_interrupted within the lease", () =>
    Effect.gen(function*() {
      const [a, b] = yield* Effect.all([startInstance, startInstance], { concurrency: 2 })
      fake!.reset()
      fake!.enqueue(FakeOpenAI.Behaviour.stream(FakeOpenAI.textChunks(TEXT), { stallAfter: 4 }))
      const seen = yield* begin(a, 3)
      const streamId = streamIdOf(seen)

      const client = yield* connect(b)
      client.send({ type: "resume", request_id: "r2", payload: { stream_id: streamId } })
      yield* client.waitForFrames((frames) => frames.length >= seen.length, { message: "the stored frames" })
      const killedAt = Date.now()
      yield* Effect.promise(() => ServerProcess.stop(a, "SIGKILL"))
      const frames = yield* client.collect("r2", "20 seconds")
      expect(Date.now() - killedAt).toBeLessThan(10_000)
      expect(frames.at(-1)).toMatchObject({ type: "error", data: { category: "upstream", code: "stream_interrupted" } })
      expect(frames.slice(0, -1).map(seqOf)).toEqual(frames.slice(0, -1).map((_, i) => i + 1))
      expect(textOf(frames).startsWith(textOf(seen))).toBe(true)
    }), 60_000)

  it.scopedLive("an id no instance knows is not found, once the window for a row still being written has passed", () =>
    Effect.gen(function*() {
      const b = yield* startInstance
      const client = yield* connect(b)
      const started = Date.now()
      const [frame] = yield* client.request({ type: "resume", request_id: "unknown", payload: { stream_id: "no-such-stream-0123456789" } })
      expect(frame).toMatchObject({ type: "error", data: { category: "not_found", code: "stream_not_found" } })
      // Looked again for about 2 seconds (a row may be in flight from another instance), not for ever.
      expect(Date.now() - started).toBeLessThan(8_000)
    }), 60_000)
})
