/**
 * The server against a fake OpenAI upstream, through the real openai SDK:
 * what reaches the upstream (defaults, parameters, the key), how every
 * upstream failure becomes an error frame, retries, timeouts and streaming
 * that reaches the client as it happens.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import type { ClientFrame, ServerFrame } from "../../src/protocol/Frames.js"
import { Behaviour, completion, FakeOpenAIService, textChunks } from "../support/FakeOpenAI.js"
import * as TestServer from "../support/TestServer.js"
import * as WsClient from "../support/WsClient.js"
import { freePort } from "../support/Ports.js"

const KEY = TestServer.TEST_API_KEY

const connect = Effect.flatMap(TestServer.urls, ({ ws }) => WsClient.connect(ws))

/** The fake, with its queue and recorded requests cleared (the layer shares one fake per block). */
const freshFake = Effect.tap(FakeOpenAIService, (fake) => Effect.sync(() => fake.reset()))

type ChatType = "chat_completion" | "chat_completion_stream"
const chatTypes: ReadonlyArray<ChatType> = ["chat_completion", "chat_completion_stream"]

const chat = (type: ChatType, requestId: string, content = "hello"): ClientFrame =>
  type === "chat_completion"
    ? { type, request_id: requestId, payload: { messages: [{ role: "user", content }] } }
    : { type, request_id: requestId, payload: { messages: [{ role: "user", content }] } }

type ErrorFrame = Extract<ServerFrame, { readonly type: "error" }>

const lastError = (frames: ReadonlyArray<ServerFrame>): ErrorFrame => {
  const last = frames.at(-1)
  if (last?.type !== "error") return expect.fail(`expected an error frame last, got ${JSON.stringify(frames)}`)
  return last
}

const chunkText = (frames: ReadonlyArray<ServerFrame>): string =>
  frames.filter(WsClient.frameOf("chat_completion_stream_chunk"))
    .map((frame) => frame.data.choices[0]?.delta.content ?? "")
    .join("")

const expectNoSecret = (frames: ReadonlyArray<ServerFrame>) => {
  const text = JSON.stringify(frames)
  expect(text).not.toContain(KEY)
  expect(text).not.toContain("0123456789abcdefSECRET")
}

/** A loopback port nothing listens on. */
const closedPort = Effect.promise(freePort)

interface ErrorCase {
  readonly name: string
  readonly behaviour: Behaviour
  readonly data: ErrorFrame["data"]
  /** Text of the upstream message that must reach the client. */
  readonly includes?: string
  /** Text that must not reach the client. */
  readonly excludes?: ReadonlyArray<string>
}

// Every upstream message carries the API key: no frame may repeat it.
const errorCases: ReadonlyArray<ErrorCase> = [
  {
    name: "400 → validation/upstream_bad_request with the upstream message",
    behaviour: Behaviour.error(400, `Invalid value for 'messages[0].role' (key ${KEY})`),
    data: { category: "validation", code: "upstream_bad_request", retryable: false },
    includes: "Invalid value for 'messages[0].role'"
  },
  {
    name: "422 → validation/upstream_unprocessable with the upstream message",
    behaviour: Behaviour.error(422, `Unprocessable: max_tokens too large (key ${KEY})`),
    data: { category: "validation", code: "upstream_unprocessable", retryable: false },
    includes: "Unprocessable: max_tokens too large"
  },
  {
    name: "401 → authentication without the upstream message or the key",
    behaviour: Behaviour.error(401, `Incorrect API key provided: ${KEY}. You can find your API key somewhere.`),
    data: { category: "authentication", code: "upstream_unauthorized", retryable: false },
    excludes: ["Incorrect API key provided", "You can find your API key"]
  },
  {
    name: "403 → permission",
    behaviour: Behaviour.error(403, `Project does not have access to this model (key ${KEY})`),
    data: { category: "permission", code: "upstream_forbidden", retryable: false },
    includes: "Project does not have access to this model"
  },
  {
    name: "404 model_not_found → not_found/model_not_found",
    behaviour: Behaviour.error(404, `The model 'gpt-nope' does not exist (key ${KEY})`, { code: "model_not_found" }),
    data: { category: "not_found", code: "model_not_found", retryable: false },
    includes: "The model 'gpt-nope' does not exist"
  },
  {
    name: "429 → rate_limit, retryable",
    behaviour: Behaviour.error(429, `Rate limit reached for requests (key ${KEY})`),
    data: { category: "rate_limit", code: "rate_limited", retryable: true },
    includes: "Rate limit reached for requests"
  },
  {
    name: "500 → upstream, retryable",
    behaviour: Behaviour.error(500, `The server had an error (key ${KEY})`),
    data: { category: "upstream", code: "upstream_error", retryable: true },
    includes: "HTTP 500"
  },
  {
    name: "503 → upstream, retryable",
    behaviour: Behaviour.error(503, `The engine is currently overloaded (key ${KEY})`),
    data: { category: "upstream", code: "upstream_error", retryable: true },
    includes: "HTTP 503"
  },
  {
    name: "a connection dropped before any response → upstream/upstream_unreachable",
    behaviour: Behaviour.disconnect(),
    data: { category: "upstream", code: "upstream_unreachable", retryable: true }
  }
]

const fakeEnv = {
  OPENAI_MODEL: "gpt-test-model",
  OPENAI_TEMPERATURE: "0.3",
  OPENAI_MAX_TOKENS: "321",
  OPENAI_EMBEDDING_MODEL: "emb-test-model"
}

/** A stream that stalls after two chunks: the chunks, then a timeout error, no end frame, upstream aborted. */
const stallTimesOut = (requestId: string) =>
  Effect.gen(function*() {
    const fake = yield* freshFake
    const client = yield* connect
    fake.enqueue(Behaviour.stream(textChunks("one two three four"), { stallAfter: 2 }))
    const frames = yield* client.request(chat("chat_completion_stream", requestId), "5 seconds")
    expect(frames.filter(WsClient.frameOf("chat_completion_stream_chunk"))).toHaveLength(2)
    expect(lastError(frames).data).toEqual({ category: "timeout", code: "upstream_timeout", retryable: true })
    expect(frames.filter(WsClient.frameOf("chat_completion_stream_end"))).toHaveLength(0)
    // The idle timeout also lets go of the upstream request.
    yield* fake.awaitAborted(1)
  })

/** A stream with gaps under the timeout arrives whole. */
const steadyArrivesWhole = (requestId: string, delayMs: number) =>
  Effect.gen(function*() {
    const fake = yield* freshFake
    const client = yield* connect
    fake.enqueue(Behaviour.stream(textChunks("a b c d e"), { delayMs }))
    const frames = yield* client.request(chat("chat_completion_stream", requestId), "5 seconds")
    expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")
    expect(chunkText(frames)).toBe("a b c d e")
  })

describe("upstream (fake OpenAI through the openai SDK)", () => {
  layer(TestServer.layerWithFakeUpstream(fakeEnv), { excludeTestServices: true })("defaults and parameters", (it) => {
    it.scoped("a chat_completion with only messages gets the configured model, temperature and max_tokens", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const [response] = yield* client.request(chat("chat_completion", "c1", "hi there"))
        if (response?.type !== "chat_completion_response") return expect.fail(JSON.stringify(response))
        expect(response.data.choices[0]?.message.content).toBe("echo: hi there")
        expect(response.data.model).toBe("gpt-test-model")

        expect(fake.requestCount).toBe(1)
        const request = fake.lastRequest
        expect(request?.method).toBe("POST")
        expect(request?.path).toBe("/v1/chat/completions")
        expect(request?.fields).toMatchObject({
          model: "gpt-test-model",
          temperature: 0.3,
          max_tokens: 321,
          messages: [{ role: "user", content: "hi there" }]
        })
        expect(request?.fields["stream"]).not.toBe(true)
        expect(request?.fields).not.toHaveProperty("max_completion_tokens")
        expect(request?.fields).not.toHaveProperty("stream_options")
      }))

    it.scoped("the API key reaches the upstream as a Bearer token", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        yield* client.request(chat("chat_completion", "k1"))
        yield* client.request(chat("chat_completion_stream", "k2"))
        yield* client.request({ type: "embedding", request_id: "k3", payload: { input: "x" } })
        expect(fake.requests).toHaveLength(3)
        for (const request of fake.requests) expect(request.headers["authorization"]).toBe(`Bearer ${KEY}`)
        // ...and never travels back to the client.
        expectNoSecret(client.frames)
      }))

    it.scoped("explicit parameters pass through unchanged; max_completion_tokens suppresses the max_tokens default", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const explicit = {
          model: "gpt-explicit",
          temperature: 1.5,
          top_p: 0.25,
          stop: ["END", "STOP"],
          seed: 42,
          user: "user-7",
          presence_penalty: 0.5,
          frequency_penalty: -0.75,
          response_format: { type: "json_object" as const },
          max_completion_tokens: 77
        }
        for (const type of chatTypes) {
          const frames = yield* client.request(
            type === "chat_completion"
              ? { type, request_id: type, payload: { messages: [{ role: "user", content: "p" }], ...explicit } }
              : { type, request_id: type, payload: { messages: [{ role: "user", content: "p" }], ...explicit } }
          )
          expect(frames.at(-1)?.type).not.toBe("error")
          const fields = fake.lastRequest?.fields
          expect(fields).toMatchObject(explicit)
          expect(fields).not.toHaveProperty("max_tokens")
        }

        // An explicit max_tokens wins over the default too.
        yield* client.request({
          type: "chat_completion",
          request_id: "mt",
          payload: { messages: [{ role: "user", content: "p" }], max_tokens: 5, temperature: 0 }
        })
        expect(fake.lastRequest?.fields).toMatchObject({ max_tokens: 5, temperature: 0, model: "gpt-test-model" })
        expect(fake.lastRequest?.fields).not.toHaveProperty("max_completion_tokens")
      }))

    it.scoped("unknown payload fields and server-only options are not forwarded", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        for (const type of chatTypes) {
          client.send(JSON.stringify({
            type,
            request_id: `u-${type}`,
            payload: {
              messages: [{ role: "user", content: "u", secret_field: 1 }],
              bogus: "nope",
              logit_bias: { "50256": -100 },
              api_key: "sk-client-supplied-should-not-travel",
              auto_execute_tools: false,
              max_tool_rounds: 3,
              tools: []
            }
          }))
          const frames = yield* client.collect(`u-${type}`)
          expect(frames.at(-1)?.type).not.toBe("error")
          const fields = fake.lastRequest?.fields ?? {}
          for (const name of ["bogus", "logit_bias", "api_key", "auto_execute_tools", "max_tool_rounds", "tools"]) {
            expect(fields).not.toHaveProperty(name)
          }
          expect(fields["messages"]).toEqual([{ role: "user", content: "u" }])
          expect(fake.lastRequest?.rawBody).not.toContain("sk-client-supplied")
        }
      }))

    it.scoped("a streaming request asks for stream: true and usage, and the end frame carries it", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const frames = yield* client.request(chat("chat_completion_stream", "s1", "stream me please"))
        expect(fake.lastRequest?.fields).toMatchObject({
          stream: true,
          stream_options: { include_usage: true },
          model: "gpt-test-model",
          temperature: 0.3,
          max_tokens: 321
        })
        const ends = frames.filter(WsClient.frameOf("chat_completion_stream_end"))
        expect(ends).toHaveLength(1)
        expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")
        expect(chunkText(frames)).toBe("echo: stream me please")
        expect(ends[0]?.data.content).toBe("echo: stream me please")
        expect(ends[0]?.data.finish_reason).toBe("stop")
        expect(ends[0]?.data.usage).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 })
      }))

    it.scoped("embedding defaults the model, passes dimensions and asks for floats, for a string and a list", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const [one] = yield* client.request({ type: "embedding", request_id: "e1", payload: { input: "fox" } })
        if (one?.type !== "embedding_response") return expect.fail(JSON.stringify(one))
        expect(fake.lastRequest?.path).toBe("/v1/embeddings")
        expect(fake.lastRequest?.fields).toEqual({ input: "fox", model: "emb-test-model", encoding_format: "float" })
        expect(one.data.model).toBe("emb-test-model")
        expect(one.data.data).toHaveLength(1)

        const [many] = yield* client.request({
          type: "embedding",
          request_id: "e2",
          payload: { input: ["fox", "dog", "cat"], dimensions: 12, user: "u-1" }
        })
        if (many?.type !== "embedding_response") return expect.fail(JSON.stringify(many))
        expect(fake.lastRequest?.fields).toEqual({
          input: ["fox", "dog", "cat"],
          model: "emb-test-model",
          dimensions: 12,
          user: "u-1",
          encoding_format: "float"
        })
        expect(many.data.data.map((item) => item.index)).toEqual([0, 1, 2])
        for (const item of many.data.data) expect(item.embedding).toHaveLength(12)

        yield* client.request({ type: "embedding", request_id: "e3", payload: { input: "fox", model: "emb-explicit" } })
        expect(fake.lastRequest?.fields["model"]).toBe("emb-explicit")
      }))

    it.scoped("an embeddings answer in OpenAI's exact shape reaches the client as the text the upstream wrote", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const texts: Array<string> = []
        client.raw.on("message", (data) => texts.push(String(data)))
        const answer = {
          object: "list",
          data: [{ object: "embedding", index: 0, embedding: [0.5, -0.25, 1e-7] }],
          model: "emb-raw",
          usage: { prompt_tokens: 2, total_tokens: 2 }
        }
        // Spaced out as JSON.stringify never writes it: only the upstream's own text has these spaces.
        const text = JSON.stringify(answer, null, 1)
        fake.enqueue(Behaviour.json(undefined, { text }))
        const [response] = yield* client.request({ type: "embedding", request_id: "raw", payload: { input: "fox" } })
        if (response?.type !== "embedding_response") return expect.fail(JSON.stringify(response))
        expect(response.data).toEqual(answer)
        expect(texts.find((frame) => frame.includes(`"request_id":"raw"`))).toBe(
          `{"type":"embedding_response","request_id":"raw","data":${text}}`
        )

        // A field the Schema does not know: the answer goes through the Schema, which leaves it out.
        fake.enqueue(Behaviour.json(undefined, { text: JSON.stringify({ ...answer, provider_extra: { cost: 1 } }, null, 1) }))
        const [stripped] = yield* client.request({ type: "embedding", request_id: "extra", payload: { input: "fox" } })
        if (stripped?.type !== "embedding_response") return expect.fail(JSON.stringify(stripped))
        expect(stripped.data).toEqual(answer)
        expect(texts.find((frame) => frame.includes(`"request_id":"extra"`))).toBe(
          `{"type":"embedding_response","request_id":"extra","data":${JSON.stringify(answer)}}`
        )

        // Not JSON at all: an upstream error, not an internal one.
        fake.enqueue(Behaviour.json(undefined, { text: "{\"object\": \"list\", " }))
        const broken = lastError(yield* client.request({ type: "embedding", request_id: "broken", payload: { input: "fox" } }))
        expect(broken.data).toEqual({ category: "upstream", code: "invalid_upstream_response", retryable: true })
      }))

    it.scoped("a streamed text chunk reaches the client as the text the upstream wrote; other chunks go through the Schema", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const texts: Array<string> = []
        client.raw.on("message", (data) => texts.push(String(data)))
        const [role, first, ...rest] = textChunks("verbatim text")
        if (role === undefined || first === undefined) return expect.fail("textChunks gave too few chunks")
        // A text chunk spaced out (only the upstream's own text has these spaces), and one with a field the Schema drops.
        const spaced = JSON.stringify(first, null, 1).replace(/\n/g, "")
        const extra = { ...rest[0], provider_extra: 1 }
        fake.enqueue(Behaviour.stream([role, spaced, extra, ...rest.slice(1)]))
        const frames = yield* client.request(chat("chat_completion_stream", "rawchunks"))
        expect(chunkText(frames)).toBe("verbatim text")
        const chunkFrames = texts.filter((frame) => frame.startsWith(`{"type":"chat_completion_stream_chunk","request_id":"rawchunks"`))
        expect(chunkFrames[1]).toBe(`{"type":"chat_completion_stream_chunk","request_id":"rawchunks","seq":2,"data":${spaced}}`)
        expect(chunkFrames[2]).not.toContain("provider_extra")
        expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")
      }))

    it.scoped("a scripted completion is returned as the upstream sent it", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.json(completion({ content: "scripted", finishReason: "length", model: "m-x" })))
        const [response] = yield* client.request(chat("chat_completion", "sc"))
        if (response?.type !== "chat_completion_response") return expect.fail(JSON.stringify(response))
        expect(response.data.model).toBe("m-x")
        expect(response.data.choices[0]?.message.content).toBe("scripted")
        expect(response.data.choices[0]?.finish_reason).toBe("length")
      }))

    it.scoped("a slow stream reaches the client chunk by chunk, not all at the end", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const arrivals: Array<{ readonly type: string; readonly at: number; readonly upstreamDone: boolean }> = []
        client.raw.on("message", (data) => {
          const parsed: unknown = JSON.parse(data.toString())
          const type = typeof parsed === "object" && parsed !== null && "type" in parsed ? String(parsed.type) : "?"
          arrivals.push({ type, at: Date.now(), upstreamDone: fake.lastRequest?.finished === true })
        })
        const words = "one two three four five six"
        fake.enqueue(Behaviour.stream(textChunks(words, { includeUsage: true }), { delayMs: 50 }))
        const frames = yield* client.request(chat("chat_completion_stream", "slow"))
        expect(chunkText(frames)).toBe(words)
        expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")

        const chunks = arrivals.filter((a) => a.type === "chat_completion_stream_chunk")
        const end = arrivals.find((a) => a.type === "chat_completion_stream_end")
        const first = chunks[0]
        if (first === undefined || end === undefined) return expect.fail(JSON.stringify(arrivals))
        expect(chunks.length).toBe(9)
        // 9 chunks 50 ms apart: the first must arrive long before the end.
        expect(end.at - first.at).toBeGreaterThanOrEqual(250)
        expect(first.upstreamDone).toBe(false)
        // And they arrive spread out, not in one burst.
        const spread = new Set(chunks.map((c) => Math.floor(c.at / 25)))
        expect(spread.size).toBeGreaterThanOrEqual(5)
      }))
  })

  layer(TestServer.layerWithFakeUpstream(), { excludeTestServices: true })("upstream errors", (it) => {
    for (const testCase of errorCases) {
      for (const type of chatTypes) {
        it.scoped(`${type}: ${testCase.name}`, () =>
          Effect.gen(function*() {
            const fake = yield* freshFake
            const client = yield* connect
            fake.enqueue(testCase.behaviour)
            const frames = yield* client.request(chat(type, "r1"))
            expect(frames).toHaveLength(1)
            const error = lastError(frames)
            expect(error.request_id).toBe("r1")
            expect(error.data).toEqual(testCase.data)
            if (testCase.includes !== undefined) expect(error.error).toContain(testCase.includes)
            for (const text of testCase.excludes ?? []) expect(error.error).not.toContain(text)
            expectNoSecret(client.frames)
            // OPENAI_MAX_RETRIES=0 here: exactly one upstream attempt.
            expect(fake.requestCount).toBe(1)

            // The connection is still usable afterwards.
            const [pong] = yield* client.request({ type: "ping", request_id: "alive" })
            expect(pong?.type).toBe("pong")
          }))
      }
    }

    it.scoped("embedding: upstream errors map the same way", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(
          Behaviour.error(429, `slow down (key ${KEY})`),
          Behaviour.error(404, "no such model", { code: "model_not_found" })
        )
        const rate = lastError(yield* client.request({ type: "embedding", request_id: "e1", payload: { input: "a" } }))
        expect(rate.data).toEqual({ category: "rate_limit", code: "rate_limited", retryable: true })
        const missing = lastError(yield* client.request({ type: "embedding", request_id: "e2", payload: { input: "a" } }))
        expect(missing.data).toEqual({ category: "not_found", code: "model_not_found", retryable: false })
        expectNoSecret(client.frames)
      }))

    it.scoped("404 without model_not_found → not_found/upstream_not_found", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.error(404, "Not found"))
        const error = lastError(yield* client.request(chat("chat_completion", "nf")))
        expect(error.data).toEqual({ category: "not_found", code: "upstream_not_found", retryable: false })
      }))

    it.scoped("a stream cut mid-way → chunks, then upstream/stream_interrupted, and no end frame", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.stream(textChunks("alpha beta gamma delta epsilon"), { cutAfter: 3 }))
        const frames = yield* client.request(chat("chat_completion_stream", "cut"))
        const chunks = frames.filter(WsClient.frameOf("chat_completion_stream_chunk"))
        expect(chunks).toHaveLength(3)
        expect(chunkText(frames)).toBe("alpha beta")
        const error = lastError(frames)
        expect(error.data).toEqual({ category: "upstream", code: "stream_interrupted", retryable: true })
        expect(frames.filter(WsClient.frameOf("chat_completion_stream_end"))).toHaveLength(0)
        expect(fake.lastRequest?.cut).toBe(true)
        expectNoSecret(client.frames)
      }))

    it.scoped("a stream that ends without a finish_reason → upstream error, no end frame", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.stream(textChunks("unfinished business").slice(0, -1)))
        const frames = yield* client.request(chat("chat_completion_stream", "nofinish"))
        expect(chunkText(frames)).toBe("unfinished business")
        const error = lastError(frames)
        expect(error.data).toEqual({ category: "upstream", code: "stream_interrupted", retryable: true })
        expect(frames.filter(WsClient.frameOf("chat_completion_stream_end"))).toHaveLength(0)
      }))

    it.scoped("a stream with an unreadable chunk → upstream error", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const [role, ...rest] = textChunks("ok then")
        fake.enqueue(Behaviour.stream([...(role ? [role] : []), { object: "chat.completion.chunk", nonsense: true }, ...rest]))
        const frames = yield* client.request(chat("chat_completion_stream", "bad"))
        const error = lastError(frames)
        expect(error.data).toEqual({ category: "upstream", code: "invalid_upstream_response", retryable: true })
        expect(frames.filter(WsClient.frameOf("chat_completion_stream_end"))).toHaveLength(0)
      }))

    it.scoped("a completion of the wrong shape → upstream/invalid_upstream_response", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        fake.enqueue(Behaviour.json({ id: "x", choices: "not a list" }))
        const error = lastError(yield* client.request(chat("chat_completion", "shape")))
        expect(error.data).toEqual({ category: "upstream", code: "invalid_upstream_response", retryable: true })
      }))
  })

  layer(TestServer.layerWithFakeUpstream({ OPENAI_TIMEOUT_SECONDS: "0.5" }), { excludeTestServices: true })(
    "timeouts (OPENAI_TIMEOUT_SECONDS=0.5)",
    (it) => {
      for (const type of chatTypes) {
        it.scoped(`${type}: a response that never comes → timeout, retryable, upstream aborted`, () =>
          Effect.gen(function*() {
            const fake = yield* freshFake
            const client = yield* connect
            fake.enqueue(Behaviour.hang)
            const started = Date.now()
            const frames = yield* client.request(chat(type, "t1"), "5 seconds")
            const elapsed = Date.now() - started
            expect(frames).toHaveLength(1)
            expect(lastError(frames).data).toEqual({ category: "timeout", code: "upstream_timeout", retryable: true })
            expect(elapsed).toBeGreaterThanOrEqual(400)
            expect(elapsed).toBeLessThan(3000)
            yield* fake.awaitAborted(1)
            expectNoSecret(client.frames)
          }))
      }

      it.scoped("a stream that stalls after some chunks → chunks, then a timeout error and no end frame", () =>
        stallTimesOut("stall"))

      it.scoped("a slow but steady stream (gaps under the timeout) is not cut off", () => steadyArrivesWhole("steady", 100))
    }
  )

  layer(
    TestServer.layerWithFakeUpstream({ OPENAI_TIMEOUT_SECONDS: "0.5", WS_MAX_BUFFERED_BYTES: "1" }),
    { excludeTestServices: true }
  )("timeouts while the client is behind (WS_MAX_BUFFERED_BYTES=1: every chunk waits for the client)", (it) => {
    it.scoped("a stream that stalls after the client caught up still times out", () => stallTimesOut("stall-behind"))

    it.scoped("a steady stream is delivered whole, waiting for the client at every chunk", () =>
      steadyArrivesWhole("steady-behind", 50))
  })

  layer(TestServer.layerWithFakeUpstream({ OPENAI_MAX_RETRIES: "2" }), { excludeTestServices: true })(
    "retries (OPENAI_MAX_RETRIES=2)",
    (it) => {
      for (const type of chatTypes) {
        it.scoped(`${type}: a 500 is tried 3 times, then reported`, () =>
          Effect.gen(function*() {
            const fake = yield* freshFake
            const client = yield* connect
            fake.enqueue(
              Behaviour.error(500, "boom 1"),
              Behaviour.error(500, "boom 2"),
              Behaviour.error(500, "boom 3")
            )
            const frames = yield* client.request(chat(type, "r500"))
            expect(lastError(frames).data).toEqual({ category: "upstream", code: "upstream_error", retryable: true })
            expect(lastError(frames).error).toContain("boom 3")
            expect(fake.requestCount).toBe(3)
          }))

        it.scoped(`${type}: a 400 is tried once`, () =>
          Effect.gen(function*() {
            const fake = yield* freshFake
            const client = yield* connect
            fake.enqueue(Behaviour.error(400, "bad request"))
            const frames = yield* client.request(chat(type, "r400"))
            expect(lastError(frames).data.code).toBe("upstream_bad_request")
            expect(fake.requestCount).toBe(1)
          }))

        it.scoped(`${type}: a 429 then a 503 are retried and the third attempt succeeds`, () =>
          Effect.gen(function*() {
            const fake = yield* freshFake
            const client = yield* connect
            fake.enqueue(Behaviour.error(429, "slow down"), Behaviour.error(503, "overloaded"))
            const frames = yield* client.request(chat(type, "rok", "third time"))
            expect(frames.some((frame) => frame.type === "error")).toBe(false)
            if (type === "chat_completion") {
              const [response] = frames
              if (response?.type !== "chat_completion_response") return expect.fail(JSON.stringify(frames))
              expect(response.data.choices[0]?.message.content).toBe("echo: third time")
            } else {
              expect(frames.filter(WsClient.frameOf("chat_completion_stream_end"))).toHaveLength(1)
              expect(chunkText(frames)).toBe("echo: third time")
            }
            expect(fake.requestCount).toBe(3)
          }))
      }
    }
  )

  layer(
    Layer.unwrapEffect(Effect.map(closedPort, (port) =>
      TestServer.layerWithFakeUpstream({ OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1` }))),
    { excludeTestServices: true }
  )("connection refused", (it) => {
    for (const type of chatTypes) {
      it.scoped(`${type}: nothing listening → upstream/upstream_unreachable`, () =>
        Effect.gen(function*() {
          const fake = yield* freshFake
          const client = yield* connect
          const frames = yield* client.request(chat(type, "refused"))
          expect(frames).toHaveLength(1)
          const error = lastError(frames)
          expect(error.data).toEqual({ category: "upstream", code: "upstream_unreachable", retryable: true })
          expect(error.error).toMatch(/http:\/\/127\.0\.0\.1:\d+\/v1/)
          expectNoSecret(client.frames)
          // The fake (still running on its own port) never heard of it.
          expect(fake.requestCount).toBe(0)
        }))
    }

    it.scoped("embedding: nothing listening → upstream/upstream_unreachable", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const error = lastError(yield* client.request({ type: "embedding", request_id: "e", payload: { input: "x" } }))
        expect(error.data).toEqual({ category: "upstream", code: "upstream_unreachable", retryable: true })
      }))
  })
})
