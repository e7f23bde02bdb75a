/**
 * The /ws protocol end to end on the offline model: every request type,
 * bad input, cancel and limits, over a real WebSocket.
 */
import { describe, expect, layer } from "@effect/vitest"
import { OfflineModel, OpenAi } from "aibase"
import type { ServerFrame } from "aibase/protocol"
import { Effect, Layer } from "effect"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const connect = Effect.flatMap(TestServer.urls, ({ ws }) => WsClient.connect(ws))

describe("/ws protocol", () => {
  layer(TestServer.layer({ env: { WS_MAX_IN_FLIGHT: "4", OFFLINE_WORD_DELAY_MS: "20" } }), { excludeTestServices: true })(
    "offline model",
    (it) => {
      it.scoped("ping answers pong with an ISO timestamp", () =>
        Effect.gen(function*() {
          const client = yield* connect
          const [pong] = yield* client.request({ type: "ping", request_id: "p1" })
          expect(pong?.type).toBe("pong")
          if (pong?.type !== "pong") return
          expect(new Date(pong.data.timestamp).toISOString()).toBe(pong.data.timestamp)
        }))

      it.scoped("chat_completion answers a ChatCompletion", () =>
        Effect.gen(function*() {
          const client = yield* connect
          const frames = yield* client.request({
            type: "chat_completion",
            request_id: "c1",
            payload: { messages: [{ role: "user", content: "Hello!" }] }
          })
          expect(frames).toHaveLength(1)
          const [response] = frames
          if (response?.type !== "chat_completion_response") return expect.fail(JSON.stringify(response))
          expect(response.data.object).toBe("chat.completion")
          expect(response.data.model).toBe("gpt-4o-mini")
          expect(response.data.choices[0]?.message.content).toContain("[offline model]")
          expect(response.data.choices[0]?.finish_reason).toBe("stop")
          expect(response.data.usage?.total_tokens).toBeGreaterThan(0)
        }))

      it.scoped("chat_completion_stream sends chunks then exactly one end frame with the whole text", () =>
        Effect.gen(function*() {
          const client = yield* connect
          const frames = yield* client.request({
            type: "chat_completion_stream",
            request_id: "s1",
            payload: { messages: [{ role: "user", content: "Tell me a story" }] }
          })
          const chunks = frames.filter(WsClient.frameOf("chat_completion_stream_chunk"))
          const ends = frames.filter(WsClient.frameOf("chat_completion_stream_end"))
          expect(chunks.length).toBeGreaterThan(5)
          expect(ends).toHaveLength(1)
          expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")
          const text = chunks.map((chunk) => chunk.data.choices[0]?.delta.content ?? "").join("")
          expect(ends[0]?.data.content).toBe(text)
          expect(ends[0]?.data.finish_reason).toBe("stop")
          expect(ends[0]?.data.usage?.total_tokens).toBeGreaterThan(0)
        }))

      it.scoped("embedding answers unit vectors for a string or a list", () =>
        Effect.gen(function*() {
          const client = yield* connect
          const [one] = yield* client.request({ type: "embedding", request_id: "e1", payload: { input: "fox" } })
          const [many] = yield* client.request({
            type: "embedding",
            request_id: "e2",
            payload: { input: ["fox", "dog"], dimensions: 16 }
          })
          if (one?.type !== "embedding_response" || many?.type !== "embedding_response") return expect.fail("no response")
          expect(one.data.model).toBe("text-embedding-3-small")
          expect(many.data.data).toHaveLength(2)
          expect(many.data.data[0]?.embedding).toHaveLength(16)
          const norm = Math.hypot(...(one.data.data[0]?.embedding ?? []))
          expect(norm).toBeCloseTo(1, 6)
        }))

      it.scoped("tools_list lists the built-in tools", () =>
        Effect.gen(function*() {
          const client = yield* connect
          const [frame] = yield* client.request({ type: "tools_list", request_id: "t1", payload: {} })
          if (frame?.type !== "tools_list_response") return expect.fail(JSON.stringify(frame))
          expect(frame.data.tools.map((tool) => tool.name).sort()).toEqual(["calculator", "get_current_time", "get_weather"])
        }))

      it.scoped("unreadable frames get validation errors and the connection stays open", () =>
        Effect.gen(function*() {
          const client = yield* connect
          client.send("{not json")
          const invalidJson = yield* client.waitFor(WsClient.frameOf("error"))
          expect(invalidJson.request_id).toBeNull()
          expect(invalidJson.data).toEqual({ category: "validation", code: "invalid_json", retryable: false })

          client.send(JSON.stringify({ type: "bogus", request_id: "u1" }))
          const unknown = yield* client.waitFor(WsClient.frameOf("error", "u1"))
          expect(unknown.data.code).toBe("unknown_type")
          expect(unknown.error).toContain("chat_completion")

          client.send(JSON.stringify({ type: "ping", request_id: "" }))
          client.send(JSON.stringify({ type: "ping" }))
          client.send(JSON.stringify({ type: "ping", request_id: "x".repeat(129) }))
          client.send(JSON.stringify([1, 2]))
          client.raw.send(Buffer.from([1, 2, 3]))
          // invalid_json, then one error without a request id for each of the five frames above.
          yield* client.waitForFrames(
            (frames) => frames.filter((frame) => frame.type === "error" && frame.request_id === null).length >= 6,
            { message: "six error frames without a request_id" }
          )
          const codes = client.frames.filter(WsClient.frameOf("error")).map((frame) => frame.data.code)
          expect(codes).toEqual(expect.arrayContaining(["invalid_frame", "binary_frame"]))

          client.send(JSON.stringify({
            type: "chat_completion",
            request_id: "v1",
            payload: { messages: [{ role: "wizard", content: "hi" }] }
          }))
          const [error] = yield* client.collect("v1")
          if (error?.type !== "error") return expect.fail("expected an error frame")
          expect(error.data.code).toBe("invalid_payload")
          expect(error.error).toMatch(/^payload\.messages\.0\.role/)

          const [pong] = yield* client.request({ type: "ping", request_id: "still-alive" })
          expect(pong?.type).toBe("pong")
        }))

      it.scoped("an invalid envelope with a usable request_id is answered with that id", () =>
        Effect.gen(function*() {
          const client = yield* connect
          client.send(JSON.stringify({ request_id: "no-type" }))
          const error = yield* client.waitFor(WsClient.frameOf("error", "no-type"))
          expect(error.data.code).toBe("invalid_frame")
          expect(error.error).toContain("type")
        }))

      it.scoped("many requests in flight on one connection each get their own answer", () =>
        Effect.gen(function*() {
          const client = yield* connect
          const ids = ["a", "b", "c", "d"]
          for (const id of ids) {
            client.send({
              type: "chat_completion_stream",
              request_id: id,
              payload: { messages: [{ role: "user", content: `request ${id}` }] }
            })
          }
          const results = yield* Effect.forEach(ids, (id) => client.collect(id), { concurrency: "unbounded" })
          for (const [index, frames] of results.entries()) {
            const end = frames.find(WsClient.frameOf("chat_completion_stream_end"))
            expect(end?.data.content).toContain(`request ${ids[index]}`)
          }
        }))

      it.scoped("a request beyond WS_MAX_IN_FLIGHT gets an overloaded error; a duplicate id a validation error", () =>
        Effect.gen(function*() {
          const client = yield* connect
          const payload = { messages: [{ role: "user" as const, content: "a long answer please" }] }
          for (const id of ["1", "2", "3", "4"]) client.send({ type: "chat_completion_stream", request_id: id, payload })
          client.send({ type: "chat_completion_stream", request_id: "4", payload })
          client.send({ type: "ping", request_id: "5" })
          const duplicate = yield* client.waitFor(WsClient.frameOf("error", "4"))
          expect(duplicate.data.code).toBe("duplicate_request_id")
          const overloaded = yield* client.waitFor(WsClient.frameOf("error", "5"))
          expect(overloaded.data).toEqual({ category: "overloaded", code: "too_many_in_flight", retryable: true })
          // The duplicate's error shares id "4", so wait for each stream's end frame itself.
          const ends = yield* Effect.forEach(["1", "2", "3", "4"], (id) =>
            client.waitFor(WsClient.frameOf("chat_completion_stream_end", id)))
          expect(ends.map((end) => end.data.finish_reason)).toEqual(["stop", "stop", "stop", "stop"])
        }))

      it.scoped("cancel stops a stream with one cancelled error frame and nothing after it", () =>
        Effect.gen(function*() {
          const client = yield* connect
          client.send({
            type: "chat_completion_stream",
            request_id: "long",
            payload: { messages: [{ role: "user", content: "go on and on" }] }
          })
          yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "long"))
          const [response] = yield* client.request({ type: "cancel", request_id: "k1", payload: { request_id: "long" } })
          expect(response?.type === "cancel_response" && response.data).toEqual({ request_id: "long", cancelled: true })
          const frames = yield* client.collect("long")
          expect(frames.at(-1)?.type).toBe("error")
          const last = frames.at(-1)
          if (last?.type === "error") expect(last.data.category).toBe("cancelled")
          yield* Wait.expectNothingWithin(
            "200 millis",
            client.waitFor((frame): frame is ServerFrame => frame.request_id === "long" && !frames.includes(frame)),
            { message: "frame for \"long\" after its final frame" }
          )
          const after = client.frames.filter((frame) => frame.request_id === "long")
          expect(after.length).toBe(frames.length)
          expect(after.filter((frame) => frame.type === "chat_completion_stream_end")).toHaveLength(0)

          const [again] = yield* client.request({ type: "cancel", request_id: "k2", payload: { request_id: "long" } })
          expect(again?.type === "cancel_response" && again.data.cancelled).toBe(false)
        }))
    }
  )
})

describe("/ws protocol, internal failures", () => {
  /** A model whose calls crash: a bug on our side, as far as the client can tell. */
  const CrashingModel = Layer.effect(
    OpenAi,
    Effect.map(OfflineModel.make(), (offline) =>
      OpenAi.of({ ...offline, createChatCompletion: () => Effect.die(new Error("secret internal detail")) }))
  )

  layer(TestServer.layer({ openai: CrashingModel }), { excludeTestServices: true })("crashing model", (it) => {
    it.scoped("a crash becomes an `internal` error frame without its details, and the connection goes on", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const [error] = yield* client.request({
          type: "chat_completion",
          request_id: "boom",
          payload: { messages: [{ role: "user", content: "hi" }] }
        })
        if (error?.type !== "error") return expect.fail(JSON.stringify(error))
        expect(error.data).toEqual({ category: "internal", code: "internal_error", retryable: false })
        expect(error.error).not.toContain("secret internal detail")
        const [pong] = yield* client.request({ type: "ping", request_id: "after" })
        expect(pong?.type).toBe("pong")
      }))
  })
})
