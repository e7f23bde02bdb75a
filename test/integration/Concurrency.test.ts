/**
 * Against a fake OpenAI upstream: cancel and client disconnect abort the
 * upstream HTTP request at once, and many clients stream side by side.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import type { ClientFrame, ServerFrame } from "../../src/protocol/Frames.js"
import { Behaviour, FakeOpenAIService, textChunks } from "../support/FakeOpenAI.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const connect = Effect.flatMap(TestServer.urls, ({ ws }) => WsClient.connect(ws))

const freshFake = Effect.tap(FakeOpenAIService, (fake) => Effect.sync(() => fake.reset()))

const stream = (requestId: string, content = "hello"): ClientFrame => ({
  type: "chat_completion_stream",
  request_id: requestId,
  payload: { messages: [{ role: "user", content }] }
})

const chunkText = (frames: ReadonlyArray<ServerFrame>): string =>
  frames.filter(WsClient.frameOf("chat_completion_stream_chunk"))
    .map((frame) => frame.data.choices[0]?.delta.content ?? "")
    .join("")

/** Fails unless the fake records `n` aborted requests within 1 s; returns how long it took. */
const abortedWithinASecond = (n = 1) =>
  Effect.gen(function*() {
    const fake = yield* FakeOpenAIService
    const started = Date.now()
    const aborted = yield* fake.awaitAborted(n, "1 second")
    return { aborted, elapsed: Date.now() - started }
  })

/** The `clients` count /health reports. */
const healthClients = Effect.gen(function*() {
  const { http } = yield* TestServer.urls
  const body: unknown = yield* Effect.promise(() => fetch(`${http}/health`).then((response) => response.json()))
  return typeof body === "object" && body !== null && "clients" in body && typeof body.clients === "number"
    ? body.clients
    : -1
})

/** Polls /health until it reports `n` clients (fails after 10 s with the last count seen). */
const awaitHealthClients = (n: number) =>
  Wait.poll(healthClients, (clients) => clients === n, { message: `/health to report ${n} clients` })

describe("cancellation and load (fake OpenAI through the openai SDK)", () => {
  layer(TestServer.layerWithFakeUpstream(), { excludeTestServices: true })("aborting the upstream", (it) => {
    it.scoped("cancel of a stalled stream aborts the upstream request", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.stream(textChunks("one two three four five"), { stallAfter: 2 }))
        client.send(stream("s1"))
        yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "s1"))
        expect(fake.lastRequest?.aborted).toBe(false)

        const [response] = yield* client.request({ type: "cancel", request_id: "k1", payload: { request_id: "s1" } })
        if (response?.type !== "cancel_response") return expect.fail(JSON.stringify(response))
        expect(response.data).toEqual({ request_id: "s1", cancelled: true })
        const frames = yield* client.collect("s1")
        const last = frames.at(-1)
        if (last?.type !== "error") return expect.fail(JSON.stringify(frames))
        expect(last.data).toEqual({ category: "cancelled", code: "cancelled", retryable: false })
        expect(frames.filter(WsClient.frameOf("chat_completion_stream_end"))).toHaveLength(0)

        const { aborted, elapsed } = yield* abortedWithinASecond()
        expect(aborted).toHaveLength(1)
        expect(elapsed).toBeLessThan(1000)
        expect(fake.lastRequest?.finished).toBe(false)
      }))

    it.scoped("cancel of a hanging chat_completion aborts the upstream request", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.hang)
        client.send({ type: "chat_completion", request_id: "h1", payload: { messages: [{ role: "user", content: "x" }] } })
        yield* fake.awaitRequests(1)

        const [response] = yield* client.request({ type: "cancel", request_id: "k1", payload: { request_id: "h1" } })
        if (response?.type !== "cancel_response") return expect.fail(JSON.stringify(response))
        expect(response.data).toEqual({ request_id: "h1", cancelled: true })
        const [error] = yield* client.collect("h1")
        if (error?.type !== "error") return expect.fail(JSON.stringify(error))
        expect(error.data.category).toBe("cancelled")

        const { elapsed } = yield* abortedWithinASecond()
        expect(elapsed).toBeLessThan(1000)
      }))

    it.scoped("cancelling one stream aborts only its upstream; a sibling stream completes", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(
          Behaviour.stream(textChunks("stalled forever"), { stallAfter: 1 }),
          Behaviour.stream(textChunks("a b c d e"), { delayMs: 30 })
        )
        client.send(stream("stuck"))
        yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "stuck"))
        client.send(stream("fine"))
        yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "fine"))
        client.send({ type: "cancel", request_id: "k", payload: { request_id: "stuck" } })

        const fine = yield* client.collect("fine")
        expect(fine.at(-1)?.type).toBe("chat_completion_stream_end")
        expect(chunkText(fine)).toBe("a b c d e")
        yield* abortedWithinASecond()
        const [stuck, ok] = fake.requests
        expect(stuck?.aborted).toBe(true)
        expect(ok?.aborted).toBe(false)
        expect(ok?.finished).toBe(true)
      }))

    it.scoped("closing the client socket aborts a stalled stream upstream", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.stream(textChunks("one two three four"), { stallAfter: 2 }))
        client.send(stream("d1"))
        yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "d1"))
        yield* client.close()
        const { elapsed } = yield* abortedWithinASecond()
        expect(elapsed).toBeLessThan(1000)
      }))

    it.scoped("terminating the client socket aborts a hanging chat_completion upstream", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.hang)
        client.send({ type: "chat_completion", request_id: "d2", payload: { messages: [{ role: "user", content: "x" }] } })
        yield* fake.awaitRequests(1)
        client.raw.terminate()
        const { elapsed } = yield* abortedWithinASecond()
        expect(elapsed).toBeLessThan(1000)
      }))
  })

  layer(TestServer.layerWithFakeUpstream(), { excludeTestServices: true })("many clients", (it) => {
    it.scoped("50 clients stream at once; each gets its full text and exactly one end frame", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        fake.setDefault(Behaviour.echo({ chunkDelayMs: 20 }))
        const N = 50
        expect(yield* awaitHealthClients(0)).toBe(0)

        yield* Effect.scoped(Effect.gen(function*() {
          const clients = yield* Effect.forEach(Array.from({ length: N }, (_, i) => i), () => connect, {
            concurrency: "unbounded"
          })
          expect(yield* awaitHealthClients(N)).toBe(N)

          const content = (i: number) => `client number ${i} says hi`
          for (const [i, client] of clients.entries()) client.send(stream(`s-${i}`, content(i)))
          const results = yield* Effect.forEach(clients, (client, i) => client.collect(`s-${i}`, "10 seconds"), {
            concurrency: "unbounded"
          })

          for (const [i, frames] of results.entries()) {
            const expected = `echo: ${content(i)}`
            const ends = frames.filter(WsClient.frameOf("chat_completion_stream_end"))
            expect(frames.some((frame) => frame.type === "error")).toBe(false)
            expect(ends).toHaveLength(1)
            expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")
            expect(chunkText(frames)).toBe(expected)
            expect(ends[0]?.data.content).toBe(expected)
          }
          // Nobody got anyone else's frames.
          for (const [i, client] of clients.entries()) {
            expect(client.frames.every((frame) => frame.request_id === `s-${i}`)).toBe(true)
          }
          expect(fake.requestCount).toBe(N)

          // The upstream calls ran side by side, not one after another.
          const events = fake.requests.flatMap((r) => [{ at: r.startedAt, d: 1 }, { at: r.endedAt ?? Infinity, d: -1 }])
            .sort((a, b) => a.at - b.at || a.d - b.d)
          let open = 0
          let peak = 0
          for (const event of events) peak = Math.max(peak, (open += event.d))
          expect(peak).toBeGreaterThanOrEqual(10)

          // Still all connected after their streams ended.
          expect(yield* healthClients).toBe(N)
        }))

        // And gone once they close.
        expect(yield* awaitHealthClients(0)).toBe(0)
      }))
  })
})
