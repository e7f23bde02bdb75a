/**
 * Resumable streams over real sockets, through the openai SDK against the
 * fake upstream, stored in a real SQLite file: `seq` on every frame, a drop
 * and a resume that put the text together without a gap or a duplicate,
 * resuming after the end, after the retention, after nobody came back,
 * another principal, a takeover, a cancel, /rpc, and a restart.
 */
import { HttpServer } from "@effect/platform"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Effect, Exit, Layer, Option, Scope, Stream } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { WebSocket } from "ws"
import { Database } from "../../src/db/Database.js"
import type { ServerFrame } from "../../src/protocol/Frames.js"
import { Behaviour, FakeOpenAIService, textChunks } from "../support/FakeOpenAI.js"
import { rpcClient } from "../support/RpcTestClient.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const TOKEN = "resume-token-0123456789"
const OTHER = "other-token-0123456789"
const TEXT = "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen."

let folder = ""
let databases = 0
beforeAll(() => {
  folder = mkdtempSync(join(tmpdir(), "aibase-resume-"))
})
afterAll(() => rmSync(folder, { recursive: true, force: true }))

/** A server in its own scope (closed by the caller, or with the test's scope). */
const openServer = (env: Record<string, string> = {}, file = join(folder, `streams-${++databases}.db`)) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      TestServer.layerWithFakeUpstream({ DB_TYPE: "sqlite", DB_NAME: file, AUTH_TOKENS: `${TOKEN},${OTHER}`, ...env }),
      scope
    )
    const server = Context.get(context, HttpServer.HttpServer)
    const port = server.address._tag === "TcpAddress" ? server.address.port : 0
    return {
      file,
      close: Scope.close(scope, Exit.void),
      fake: Context.get(context, FakeOpenAIService),
      connect: (token = TOKEN) => WsClient.connect(`ws://127.0.0.1:${port}/ws?token=${token}`),
      rpc: `ws://127.0.0.1:${port}/rpc?token=${TOKEN}`,
      http: `http://127.0.0.1:${port}`,
      database: Context.get(context, Database)
    }
  })

const server = (env: Record<string, string> = {}) =>
  Effect.tap(openServer(env), (opened) => Effect.addFinalizer(() => opened.close))

const streamRequest = (requestId: string, resumable = true) => ({
  type: "chat_completion_stream" as const,
  request_id: requestId,
  payload: { messages: [{ role: "user" as const, content: "count" }], ...(resumable ? { resumable: true } : {}) }
})


const framesOf = (frames: ReadonlyArray<ServerFrame>, requestId: string): Array<ServerFrame> =>
  frames.filter((frame) => frame.request_id === requestId)

const seqOf = (frame: ServerFrame): number => {
  if (!("seq" in frame) || typeof frame.seq !== "number") return expect.fail(`no seq in ${JSON.stringify(frame)}`)
  return frame.seq
}

const textOf = (frames: ReadonlyArray<ServerFrame>): string =>
  frames.map((frame) => frame.type === "chat_completion_stream_chunk" ? frame.data.choices[0]?.delta.content ?? "" : "").join("")

const streamIdOf = (frames: ReadonlyArray<ServerFrame>): string => {
  const start = frames.find((frame) => frame.type === "chat_completion_stream_start")
  if (start?.type !== "chat_completion_stream_start") return expect.fail(`no start frame in ${JSON.stringify(frames)}`)
  return start.data.stream_id
}

const expectConsecutive = (frames: ReadonlyArray<ServerFrame>, from = 1) =>
  expect(frames.map(seqOf)).toEqual(frames.map((_, i) => i + from))

const isFinal = (frame: ServerFrame) => frame.type === "error" || frame.type === "chat_completion_stream_end"

/** A slow stream of TEXT from the fake upstream. */
const slowText = (delayMs = 25) => Behaviour.stream(textChunks(TEXT, { includeUsage: true }), { delayMs })

describe("seq", () => {
  it.scopedLive("numbers every frame of a plain stream, its error frame too", () =>
    Effect.gen(function*() {
      const { connect, fake } = yield* server()
      const client = yield* connect()
      const frames = yield* client.request(streamRequest("plain", false))
      expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")
      expect(frames.some((frame) => frame.type === "chat_completion_stream_start")).toBe(false)
      expectConsecutive(frames)

      fake.enqueue(Behaviour.stream(textChunks(TEXT), { cutAfter: 3 }))
      const failed = yield* client.request(streamRequest("cut", false))
      expect(failed.at(-1)?.type).toBe("error")
      expectConsecutive(failed)
    }))
})

describe("resumable streams", () => {
  it.scopedLive("a dropped connection resumes on a new one with no gap, no duplicate and one final frame", () =>
    Effect.gen(function*() {
      const { connect, fake, http } = yield* server()
      fake.enqueue(slowText(0))
      const uninterrupted = textOf(yield* Effect.flatMap(connect(), (client) => client.request(streamRequest("whole", false))))
      expect(uninterrupted).toBe(TEXT)

      fake.enqueue(slowText())
      const first = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* connect()
        client.send(streamRequest("r1"))
        yield* client.waitForFrames(
          (frames) => frames.filter((frame) => frame.type === "chat_completion_stream_chunk").length >= 4,
          { message: "a few chunks" }
        )
        return [...client.frames]
      }))
      const seen = framesOf(first, "r1")
      expect(seen[0]?.type).toBe("chat_completion_stream_start")
      expect(seen.some(isFinal)).toBe(false)
      expectConsecutive(seen)
      const streamId = streamIdOf(seen)
      expect(streamId).toMatch(/^[\w-]{24,}$/)

      const client = yield* connect()
      const rest = yield* client.request({ type: "resume", request_id: "r2", payload: { stream_id: streamId, after: seqOf(seen.at(-1)!) } })
      expectConsecutive(rest, seen.length + 1)
      expect(rest.filter(isFinal)).toHaveLength(1)
      expect(rest.at(-1)?.type).toBe("chat_completion_stream_end")
      expect(textOf([...seen, ...rest])).toBe(uninterrupted)
      // The upstream was called once: nobody paid twice.
      expect(fake.requests.filter((request) => request.path.endsWith("/chat/completions"))).toHaveLength(2)
      // The ledger counts the stream when it ends, not when its first connection dropped.
      const usage = Effect.promise(() =>
        fetch(`${http}/usage?group_by=status`, { headers: { authorization: `Bearer ${TOKEN}` } }).then((r) => r.text())
      )
      let last = ""
      yield* Wait.waitFor(Effect.map(usage, (text) => {
        last = text
        return text.includes(`"requests":2`)
      }), { message: "both streams in the ledger" }).pipe(Effect.tapError(() => Effect.sync(() => console.error(last))))
      expect(JSON.parse(last)).toMatchObject({ rows: [{ status: "ok", requests: 2, errors: 0 }] })
    }))

  it.live("at shutdown a resumable stream ends with `unavailable`, and a resumer after the restart learns it", () =>
    Effect.gen(function*() {
      const env = { SHUTDOWN_GRACE_SECONDS: "0.2" }
      const first = yield* openServer(env)
      first.fake.enqueue(Behaviour.stream(textChunks(TEXT), { stallAfter: 2 }))
      const streamId = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* first.connect()
        client.send(streamRequest("s"))
        const frames = yield* client.waitForFrames((frames) => frames.length >= 3, { message: "three frames" })
        return streamIdOf(frames)
      }))
      yield* first.close
      const second = yield* openServer({}, first.file)
      const frames = yield* Effect.scoped(Effect.flatMap(second.connect(), (client) =>
        client.request({ type: "resume", request_id: "r", payload: { stream_id: streamId } })))
      expect(frames.at(-1)).toMatchObject({ type: "error", data: { category: "unavailable", code: "shutting_down" } })
      expectConsecutive(frames)
      yield* second.close
    }))

  it.scopedLive("a stream that ended can be replayed whole within its retention, then it is not found", () =>
    Effect.gen(function*() {
      const { connect, database } = yield* server({ RESUME_RETENTION_SECONDS: "2" })
      const client = yield* connect()
      const original = yield* client.request(streamRequest("done"))
      const streamId = streamIdOf(original)
      const replay = yield* client.request({ type: "resume", request_id: "again", payload: { stream_id: streamId } })
      expect(replay.map(({ request_id: _, ...frame }) => frame)).toEqual(original.map(({ request_id: _, ...frame }) => frame))
      // A client that has it all gets the end frame again: a resume always ends with the final frame.
      const nothingNew = yield* client.request({ type: "resume", request_id: "all-seen", payload: { stream_id: streamId, after: 999 } })
      expect(nothingNew).toEqual([expect.objectContaining({ type: "chat_completion_stream_end", seq: seqOf(original.at(-1)!) })])

      let last: ReadonlyArray<ServerFrame> = []
      let attempt = 0
      yield* Wait.waitFor(
        Effect.suspend(() =>
          Effect.map(client.request({ type: "resume", request_id: `late-${++attempt}`, payload: { stream_id: streamId } }), (frames) => {
            last = frames
            return frames.length === 1 && frames[0]?.type === "error"
          })
        ),
        { message: "the stream to expire", timeout: "10 seconds", interval: "200 millis" }
      ).pipe(Effect.tapError(() => Effect.sync(() => console.error("last answer", JSON.stringify(last).slice(0, 300)))))
      expect(last[0]).toMatchObject({ type: "error", data: { category: "not_found", code: "stream_not_found" } })
      // The background sweep deletes it from the database too.
      const sql = yield* Option.getOrThrow(database.client)
      const stored = sql<{ n: number }>`SELECT COUNT(*) AS n FROM aibase_streams WHERE id = ${streamId}`.pipe(
        Effect.map((rows) => rows[0]?.n ?? -1),
        Effect.orDie
      )
      yield* Wait.waitFor(Effect.map(stored, (n) => n === 0), { message: "the sweep to delete the stream", timeout: "10 seconds" })
      const frames = yield* sql<{ n: number }>`SELECT COUNT(*) AS n FROM aibase_stream_frames WHERE stream_id = ${streamId}`.pipe(Effect.orDie)
      expect(frames).toEqual([{ n: 0 }])
    }))

  it.scopedLive("nobody back within RESUME_DETACHED_SECONDS: the upstream call is aborted, a resume gets the stored frames and the end", () =>
    Effect.gen(function*() {
      const { connect, fake } = yield* server({ RESUME_DETACHED_SECONDS: "1" })
      fake.enqueue(Behaviour.stream(textChunks(TEXT), { stallAfter: 3 }))
      const streamId = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* connect()
        client.send(streamRequest("s"))
        const frames = yield* client.waitForFrames((frames) => frames.length >= 3, { message: "the first frames" })
        return streamIdOf(frames)
      }))
      yield* fake.awaitAborted(1, "10 seconds")
      const client = yield* connect()
      const frames = yield* client.request({ type: "resume", request_id: "back", payload: { stream_id: streamId } })
      expect(frames.at(-1)).toMatchObject({ type: "error", data: { category: "cancelled", code: "abandoned" } })
      expectConsecutive(frames)
      // Asked for only what follows the last event: the stream's own error frame, with its own seq.
      const tail = yield* client.request({ type: "resume", request_id: "tail", payload: { stream_id: streamId, after: seqOf(frames.at(-2)!) } })
      expect(tail).toEqual([expect.objectContaining({ type: "error", seq: seqOf(frames.at(-1)!) })])
    }))

  it.scopedLive("another principal, an unknown id, and a made-up id are all not found", () =>
    Effect.gen(function*() {
      const { connect } = yield* server()
      const mine = yield* connect()
      const streamId = streamIdOf(yield* mine.request(streamRequest("mine")))
      const theirs = yield* connect(OTHER)
      for (const [id, stream] of [["a", streamId], ["b", "x".repeat(24)], ["c", "nope"]] as const) {
        const frames = yield* theirs.request({ type: "resume", request_id: id, payload: { stream_id: stream } })
        expect(frames).toEqual([expect.objectContaining({ type: "error", data: expect.objectContaining({ category: "not_found", code: "stream_not_found" }) })])
        // Not a frame of any stream: no seq, so a client that skips seen frames still reads it.
        expect(frames[0]).not.toHaveProperty("seq")
      }
      const bad = yield* theirs.request({ type: "resume", request_id: "d", payload: { after: -1 } } as never)
      expect(bad[0]).toMatchObject({ type: "error", data: { category: "validation", code: "invalid_payload" } })
    }))

  it.scopedLive("a second resume takes over: the first gets one resumed_elsewhere error and nothing more", () =>
    Effect.gen(function*() {
      const { connect, fake } = yield* server()
      fake.enqueue(slowText(40))
      const starter = yield* connect()
      starter.send(streamRequest("s"))
      const streamId = streamIdOf([yield* starter.waitFor(WsClient.frameOf("chat_completion_stream_start", "s"))])
      const a = yield* connect()
      a.send({ type: "resume", request_id: "a", payload: { stream_id: streamId } })
      yield* a.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "a"))
      const b = yield* connect()
      const rest = yield* b.request({ type: "resume", request_id: "b", payload: { stream_id: streamId } })
      expect(rest.at(-1)?.type).toBe("chat_completion_stream_end")
      expect(textOf(rest)).toBe(TEXT)
      // The starter was taken over too, by `a`.
      for (const [client, id] of [[a, "a"], [starter, "s"]] as const) {
        const mine = framesOf(client.frames, id)
        expect(mine.filter(isFinal)).toEqual([
          expect.objectContaining({ type: "error", data: expect.objectContaining({ category: "cancelled", code: "resumed_elsewhere" }) })
        ])
        expect(mine.at(-1)?.type).toBe("error")
      }
    }))

  it.scopedLive("cancelling a resumed stream cancels the stream and aborts its upstream call", () =>
    Effect.gen(function*() {
      const { connect, fake } = yield* server()
      fake.enqueue(Behaviour.stream(textChunks(TEXT), { stallAfter: 2 }))
      const streamId = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* connect()
        client.send(streamRequest("s"))
        return streamIdOf([yield* client.waitFor(WsClient.frameOf("chat_completion_stream_start", "s"))])
      }))
      const client = yield* connect()
      client.send({ type: "resume", request_id: "r", payload: { stream_id: streamId } })
      yield* client.waitForFrames((frames) => frames.length >= 2, { message: "the replay" })
      const answer = yield* client.request({ type: "cancel", request_id: "c", payload: { request_id: "r" } })
      expect(answer).toEqual([expect.objectContaining({ type: "cancel_response", data: { request_id: "r", cancelled: true } })])
      expect(framesOf(client.frames, "r").at(-1)).toMatchObject({ type: "error", data: { code: "cancelled" } })
      yield* fake.awaitAborted(1)
      // The stream itself is over: a later resume ends with the same cancellation.
      const again = yield* client.request({ type: "resume", request_id: "r2", payload: { stream_id: streamId } })
      expect(again.at(-1)).toMatchObject({ type: "error", data: { category: "cancelled" } })
    }))

  it.scopedLive("/rpc resumes too: the same events, with their seq", () =>
    Effect.gen(function*() {
      const { connect, fake, rpc } = yield* server()
      fake.enqueue(slowText())
      const seen = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* connect()
        client.send(streamRequest("s"))
        return yield* client.waitForFrames((frames) => frames.length >= 3, { message: "three frames" })
      }))
      const client = yield* rpcClient(rpc)
      const after = seqOf(seen.at(-1)!)
      const events = Chunk.toReadonlyArray(yield* Stream.runCollect(client.Resume({ stream_id: streamIdOf(seen), after })))
      expect(events.map((event) => event.seq)).toEqual(events.map((_, i) => after + 1 + i))
      expect(events.at(-1)?._tag).toBe("chat_completion_stream_end")
      const text = [...seen, ...events.map((event) => ({ type: event._tag, data: event.data }) as ServerFrame)]
      expect(textOf(text)).toBe(TEXT)

      const plain = Chunk.toReadonlyArray(yield* Stream.runCollect(client.ChatCompletionStream({ messages: [{ role: "user", content: "hi" }] })))
      expect(plain.map((event) => event.seq)).toEqual(plain.map((_, i) => i + 1))
    }))

  it.scopedLive("a dropped /rpc connection detaches its resumable stream instead of cancelling it", () =>
    Effect.gen(function*() {
      const { connect, fake, rpc } = yield* server()
      fake.enqueue(slowText())
      // A raw /rpc client, so that the connection drops without the Interrupt an RpcClient would send.
      const values: Array<{ readonly _tag: string; readonly seq?: number; readonly data: { readonly stream_id?: string } }> = []
      yield* Effect.async<void, Error>((resume) => {
        const socket = new WebSocket(rpc)
        socket.on("open", () =>
          socket.send(JSON.stringify({
            _tag: "Request",
            id: "1",
            tag: "ChatCompletionStream",
            payload: { messages: [{ role: "user", content: "count" }], resumable: true },
            headers: []
          })))
        socket.on("message", (data) => {
          const message: unknown = JSON.parse(data.toString())
          if (typeof message !== "object" || message === null || !("_tag" in message) || message._tag !== "Chunk") return
          if ("values" in message && Array.isArray(message.values)) values.push(...message.values)
          socket.send(JSON.stringify({ _tag: "Ack", requestId: "1" }))
          if (values.length >= 4) {
            socket.terminate()
            resume(Effect.void)
          }
        })
        socket.on("error", (error) => resume(Effect.fail(error)))
      })
      const streamId = values[0]?.data.stream_id
      if (streamId === undefined) return expect.fail(JSON.stringify(values[0]))
      const client = yield* connect()
      const after = values.at(-1)?.seq ?? 0
      const rest = yield* client.request({ type: "resume", request_id: "r", payload: { stream_id: streamId, after } })
      expect(rest.at(-1)?.type).toBe("chat_completion_stream_end")
      expectConsecutive(rest, after + 1)
      expect(textOf([...values.map((event) => ({ type: event._tag, data: event.data }) as ServerFrame), ...rest])).toBe(TEXT)
    }))

  it.live("a stream that ended is replayed from the database after a restart", () =>
    Effect.gen(function*() {
      const first = yield* openServer()
      const original = yield* Effect.scoped(Effect.flatMap(first.connect(), (client) => client.request(streamRequest("before"))))
      yield* first.close
      const second = yield* openServer({}, first.file)
      const replay = yield* Effect.scoped(Effect.flatMap(second.connect(), (client) =>
        client.request({ type: "resume", request_id: "after", payload: { stream_id: streamIdOf(original), after: 2 } })))
      expect(replay.map(({ request_id: _, ...frame }) => frame)).toEqual(original.slice(2).map(({ request_id: _, ...frame }) => frame))
      const nothingNew = yield* Effect.scoped(Effect.flatMap(second.connect(), (client) =>
        client.request({ type: "resume", request_id: "all-seen", payload: { stream_id: streamIdOf(original), after: 999 } })))
      expect(nothingNew).toEqual([expect.objectContaining({ type: "chat_completion_stream_end", seq: seqOf(original.at(-1)!) })])
      yield* second.close
    }))
})


