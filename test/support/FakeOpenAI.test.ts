import { describe, expect, it, layer } from "@effect/vitest"
import { Cause, Effect, Exit, Scope } from "effect"
import OpenAI from "openai"
import {
  Behaviour,
  completion,
  embeddingFor,
  type FakeOpenAI,
  FakeOpenAIService,
  make,
  textChunks,
  toolCallChunks
} from "./FakeOpenAI.js"

const clientFor = (fake: FakeOpenAI, options: { readonly maxRetries?: number; readonly timeout?: number } = {}) =>
  new OpenAI({ apiKey: "sk-test", baseURL: fake.baseUrl, maxRetries: options.maxRetries ?? 0, ...(options.timeout !== undefined ? { timeout: options.timeout } : {}) })

/** Collect a streamed chat completion; returns the chunks. */
const collect = (fake: FakeOpenAI, params: Omit<OpenAI.ChatCompletionCreateParamsStreaming, "stream">) =>
  Effect.promise(async () => {
    const stream = await clientFor(fake).chat.completions.create({ ...params, stream: true })
    const chunks: Array<OpenAI.ChatCompletionChunk> = []
    for await (const c of stream) chunks.push(c)
    return chunks
  })

const contentOf = (chunks: ReadonlyArray<OpenAI.ChatCompletionChunk>): string =>
  chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")

/** Run an SDK call expected to fail; returns the thrown error. */
const failure = <A>(thunk: () => Promise<A>) =>
  Effect.tryPromise({ try: thunk, catch: (e) => e }).pipe(Effect.flip)

const user = (content: string): OpenAI.ChatCompletionMessageParam => ({ role: "user", content })

describe("FakeOpenAI", () => {
  it.scopedLive("default chat: echoes the last user message and records the request", () =>
    Effect.gen(function*() {
      const fake = yield* make
      const result = yield* Effect.promise(() =>
        clientFor(fake).chat.completions.create({
          model: "gpt-4o-mini",
          messages: [{ role: "system", content: "be brief" }, user("first"), { role: "assistant", content: "x" }, user("hello there world")]
        })
      )
      expect(result.object).toBe("chat.completion")
      expect(result.model).toBe("gpt-4o-mini")
      expect(result.id).toMatch(/^chatcmpl-fake-\d+$/)
      expect(result.choices[0]?.message).toEqual({ role: "assistant", content: "echo: hello there world", refusal: null })
      expect(result.choices[0]?.finish_reason).toBe("stop")
      expect(result.usage).toEqual({ prompt_tokens: 7, completion_tokens: 4, total_tokens: 11 })

      const req = fake.lastRequest
      expect(req?.method).toBe("POST")
      expect(req?.path).toBe("/v1/chat/completions")
      expect(req?.headers["authorization"]).toBe("Bearer sk-test")
      expect(req?.headers["content-type"]).toContain("application/json")
      expect(req?.fields["model"]).toBe("gpt-4o-mini")
      expect(req?.finished).toBe(true)
      expect(req?.aborted).toBe(false)
      expect(fake.requestCount).toBe(1)
    }))

  it.scopedLive("default stream: role chunk, word chunks, finish chunk and usage chunk", () =>
    Effect.gen(function*() {
      const fake = yield* make
      const chunks = yield* collect(fake, {
        model: "gpt-fake-2",
        messages: [user("one two  three")],
        stream_options: { include_usage: true }
      })
      expect(chunks[0]?.choices[0]?.delta).toEqual({ role: "assistant", content: "" })
      expect(contentOf(chunks)).toBe("echo: one two  three")
      expect(chunks.length).toBe(1 + 4 + 1 + 1)
      const finish = chunks.at(-2)
      expect(finish?.choices[0]?.finish_reason).toBe("stop")
      expect(finish?.choices[0]?.delta).toEqual({})
      const usage = chunks.at(-1)
      expect(usage?.choices).toEqual([])
      expect(usage?.usage).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 })
      expect(new Set(chunks.map((c) => c.id)).size).toBe(1)
      expect(chunks.every((c) => c.object === "chat.completion.chunk" && c.model === "gpt-fake-2")).toBe(true)

      // Without include_usage there is no usage chunk.
      const plain = yield* collect(fake, { model: "m", messages: [user("hi")] })
      expect(plain.at(-1)?.choices[0]?.finish_reason).toBe("stop")
      expect(plain.some((c) => c.usage != null)).toBe(false)
      expect(fake.lastRequest?.headers["accept"]).toBeDefined()
    }))

  it.scopedLive("embeddings: float and the SDK's default base64 decode to the same vectors", () =>
    Effect.gen(function*() {
      const fake = yield* make
      const client = clientFor(fake)
      const float = yield* Effect.promise(() =>
        client.embeddings.create({ model: "text-embedding-3-small", input: ["alpha", "beta gamma"], encoding_format: "float" })
      )
      expect(float.object).toBe("list")
      expect(float.data.map((d) => d.index)).toEqual([0, 1])
      expect(float.data[0]?.embedding).toEqual(embeddingFor("alpha"))
      expect(float.data[1]?.embedding).toEqual(embeddingFor("beta gamma"))
      expect(float.data[0]?.embedding).toHaveLength(8)
      expect(float.usage).toEqual({ prompt_tokens: 3, total_tokens: 3 })

      const b64 = yield* Effect.promise(() => client.embeddings.create({ model: "text-embedding-3-small", input: "alpha", dimensions: 5 }))
      expect(fake.lastRequest?.fields["encoding_format"]).toBe("base64")
      expect(b64.data[0]?.embedding).toEqual(embeddingFor("alpha", 5))
      const norm = Math.sqrt((b64.data[0]?.embedding ?? []).reduce((s, x) => s + x * x, 0))
      expect(norm).toBeCloseTo(1, 5)
    }))

  it.scopedLive("error behaviours surface as the SDK's error classes", () =>
    Effect.gen(function*() {
      const fake = yield* make
      const client = clientFor(fake)
      const chat = () => client.chat.completions.create({ model: "m", messages: [user("x")] })
      fake.enqueue(
        Behaviour.error(429, "Slow down", { code: "rate_limit_exceeded" }),
        Behaviour.error(400, "Bad thing", { param: "messages" }),
        Behaviour.error(401, "Incorrect API key", { code: "invalid_api_key" }),
        Behaviour.error(503, "Overloaded"),
        { _tag: "Error", status: 404, message: "nope", type: "custom_type" }
      )
      const rate = yield* failure(chat)
      expect(rate).toBeInstanceOf(OpenAI.RateLimitError)
      if (rate instanceof OpenAI.RateLimitError) {
        expect(rate.status).toBe(429)
        expect(rate.code).toBe("rate_limit_exceeded")
        expect(rate.type).toBe("rate_limit_error")
        expect(rate.message).toContain("Slow down")
        expect(rate.headers.get("retry-after-ms")).toBe("10")
      }
      const bad = yield* failure(chat)
      expect(bad).toBeInstanceOf(OpenAI.BadRequestError)
      if (bad instanceof OpenAI.BadRequestError) expect(bad.param).toBe("messages")
      expect(yield* failure(chat)).toBeInstanceOf(OpenAI.AuthenticationError)
      expect(yield* failure(chat)).toBeInstanceOf(OpenAI.InternalServerError)
      const notFound = yield* failure(chat)
      expect(notFound).toBeInstanceOf(OpenAI.NotFoundError)
      if (notFound instanceof OpenAI.NotFoundError) expect(notFound.type).toBe("custom_type")
      expect(fake.requestCount).toBe(5)
    }))

  it.scopedLive("retries are fast (retry-after-ms: 10) and x-should-retry: false stops them", () =>
    Effect.gen(function*() {
      const fake = yield* make
      const client = clientFor(fake, { maxRetries: 2 })
      fake.enqueue(Behaviour.error(500, "boom"), Behaviour.error(429, "later"))
      const ok = yield* Effect.promise(() => client.chat.completions.create({ model: "m", messages: [user("retry")] }))
      expect(ok.choices[0]?.message.content).toBe("echo: retry")
      expect(fake.requestCount).toBe(3)

      fake.enqueue(Behaviour.fatal(500, "no retry"))
      const err = yield* failure(() => client.chat.completions.create({ model: "m", messages: [user("x")] }))
      expect(err).toBeInstanceOf(OpenAI.InternalServerError)
      expect(fake.requestCount).toBe(4)
    }))

  it.scopedLive("stallAfter: the client aborting is recorded as aborted", () =>
    Effect.gen(function*() {
      const fake = yield* make
      fake.enqueue(Behaviour.stream(textChunks("a b c d e"), { stallAfter: 2 }))
      const controller = new AbortController()
      const received = yield* Effect.promise(async () => {
        const stream = await clientFor(fake).chat.completions.create(
          { model: "m", messages: [user("x")], stream: true },
          { signal: controller.signal }
        )
        const got: Array<OpenAI.ChatCompletionChunk> = []
        try {
          for await (const c of stream) {
            got.push(c)
            if (got.length === 2) setTimeout(() => controller.abort(), 20)
          }
        } catch (e) {
          return { got, error: e }
        }
        return { got, error: undefined }
      })
      expect(received.got).toHaveLength(2)
      // The SDK's Stream ends quietly (no throw) when its signal aborts.
      expect(received.error).toBeUndefined()
      const aborted = yield* fake.awaitAborted(1)
      expect(aborted[0]?.aborted).toBe(true)
      expect(aborted[0]?.finished).toBe(false)
      expect(fake.abortedCount).toBe(1)
      expect(fake.inFlightCount).toBe(0)
    }))

  it.scopedLive("Hang + SDK timeout: recorded as aborted", () =>
    Effect.gen(function*() {
      const fake = yield* make
      fake.enqueue(Behaviour.hang)
      const err = yield* failure(() =>
        clientFor(fake, { timeout: 100 }).chat.completions.create({ model: "m", messages: [user("x")] })
      )
      expect(err).toBeInstanceOf(OpenAI.APIConnectionTimeoutError)
      const [req] = yield* fake.awaitAborted(1)
      expect(req?.status).toBeUndefined()
    }))

  it.scopedLive("cutAfter: the SDK iteration throws and the request is marked cut, not aborted", () =>
    Effect.gen(function*() {
      const fake = yield* make
      fake.enqueue(Behaviour.stream(textChunks("a b c d e"), { cutAfter: 3, delayMs: 5 }))
      const result = yield* Effect.promise(async () => {
        const stream = await clientFor(fake).chat.completions.create({ model: "m", messages: [user("x")], stream: true })
        const got: Array<OpenAI.ChatCompletionChunk> = []
        try {
          for await (const c of stream) got.push(c)
          return { got, threw: false }
        } catch {
          return { got, threw: true }
        }
      })
      expect(result.threw).toBe(true)
      expect(result.got).toHaveLength(3)
      const req = yield* fake.awaitRequest((r) => r.endedAt !== undefined)
      expect(req.cut).toBe(true)
      expect(req.aborted).toBe(false)
      expect(req.finished).toBe(false)
    }))

  it.scopedLive("enqueue order is respected, then the default applies; setDefault and reset", () =>
    Effect.gen(function*() {
      const fake = yield* make
      const client = clientFor(fake)
      const ask = () => Effect.promise(() => client.chat.completions.create({ model: "m", messages: [user("q")] }))
      fake.enqueue(
        Behaviour.json(completion({ content: "first" })),
        { _tag: "Json", body: completion({ content: "second" }), delayMs: 10 },
        Behaviour.respond((req) => Behaviour.json(completion({ content: `third ${req.index}` }))),
        Behaviour.slow(10)
      )
      expect(fake.pendingBehaviours).toBe(4)
      const answers: Array<string | null | undefined> = []
      for (let i = 0; i < 5; i++) answers.push((yield* ask()).choices[0]?.message.content)
      expect(answers).toEqual(["first", "second", "third 2", "echo: q", "echo: q"])

      fake.setDefault(Behaviour.json(completion({ content: "always" })))
      expect((yield* ask()).choices[0]?.message.content).toBe("always")
      fake.reset()
      expect(fake.requestCount).toBe(0)
      expect((yield* ask()).choices[0]?.message.content).toBe("echo: q")
      expect(fake.lastRequest?.index).toBe(0)
    }))

  it.scopedLive("toolCallChunks: interleaved deltas reassemble into the calls", () =>
    Effect.gen(function*() {
      const fake = yield* make
      const calls = [
        { id: "call_a", name: "get_weather", arguments: { city: "Paris", unit: "c" } },
        { id: "call_b", name: "get_time", arguments: "{\"tz\":\"UTC\"}" }
      ]
      fake.enqueue(Behaviour.stream(toolCallChunks(calls, { splitInto: 4, includeUsage: true })))
      const chunks = yield* collect(fake, { model: "m", messages: [user("x")] })
      const acc = new Map<number, { id?: string; name?: string; args: string }>()
      const order: Array<number> = []
      for (const c of chunks) {
        for (const d of c.choices[0]?.delta.tool_calls ?? []) {
          order.push(d.index)
          const entry = acc.get(d.index) ?? { args: "" }
          if (d.id !== undefined) {
            expect(d.type).toBe("function")
            expect(d.function?.arguments).toBe("")
            entry.id = d.id
          }
          if (d.function?.name !== undefined) entry.name = d.function.name
          entry.args += d.function?.arguments ?? ""
          acc.set(d.index, entry)
        }
      }
      expect(order.slice(0, 4)).toEqual([0, 1, 0, 1])
      expect(acc.get(0)).toEqual({ id: "call_a", name: "get_weather", args: JSON.stringify(calls[0]?.arguments) })
      expect(acc.get(1)).toEqual({ id: "call_b", name: "get_time", args: "{\"tz\":\"UTC\"}" })
      expect(chunks.at(-2)?.choices[0]?.finish_reason).toBe("tool_calls")
      expect(chunks.at(-1)?.usage?.total_tokens).toBeGreaterThan(0)

      const nonStream = completion({ toolCalls: calls })
      expect(nonStream.choices[0]?.finish_reason).toBe("tool_calls")
      expect(nonStream.choices[0]?.message.content).toBeNull()
    }))

  it.scopedLive("unknown route → 404, invalid JSON → 400, neither consumes the queue; models list", () =>
    Effect.gen(function*() {
      const fake = yield* make
      fake.enqueue(Behaviour.hang)
      const notFound = yield* Effect.promise(() => fetch(`${fake.baseUrl}/nope`, { method: "POST", body: "{}" }))
      expect(notFound.status).toBe(404)
      const body: unknown = yield* Effect.promise(() => notFound.json())
      expect(body).toMatchObject({ error: { type: "invalid_request_error", param: null, code: "unknown_url" } })
      const invalid = yield* Effect.promise(() =>
        fetch(`${fake.baseUrl}/chat/completions`, { method: "POST", body: "{not json", headers: { "content-type": "application/json" } })
      )
      expect(invalid.status).toBe(400)
      expect(fake.lastRequest?.rawBody).toBe("{not json")
      expect(fake.pendingBehaviours).toBe(1)
      fake.reset()

      const models = yield* Effect.promise(() => clientFor(fake).models.list())
      expect(models.data.map((m) => m.id)).toContain("gpt-fake")
    }))

  it.scopedLive("await helpers time out instead of hanging", () =>
    Effect.gen(function*() {
      const fake = yield* make
      const exit = yield* Effect.exit(fake.awaitRequests(1, "30 millis"))
      expect(Exit.isFailure(exit) && Cause.isTimeoutException(Cause.squash(exit.cause))).toBe(true)
      yield* Effect.promise(() => expect(fake.waitForAborted(1, 30)).rejects.toBeInstanceOf(Cause.TimeoutException))
    }))

  it.scopedLive("releasing the scope closes hanging connections", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const fake = yield* Scope.extend(make, scope)
      fake.setDefault(Behaviour.hang)
      const pending = clientFor(fake).chat.completions.create({ model: "m", messages: [user("x")] }).then(
        () => "resolved",
        (e: unknown) => e
      )
      yield* fake.awaitRequests(1)
      const started = Date.now()
      yield* Scope.close(scope, Exit.void)
      const outcome = yield* Effect.promise(() => pending)
      expect(outcome).toBeInstanceOf(OpenAI.APIConnectionError)
      expect(Date.now() - started).toBeLessThan(1000)
      expect(fake.lastRequest?.aborted).toBe(false)
    }))
})

layer(FakeOpenAIService.Default)("FakeOpenAIService layer", (it) => {
  it.effect("provides a running fake", () =>
    Effect.gen(function*() {
      const fake = yield* FakeOpenAIService
      expect(fake.baseUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/)
      const result = yield* Effect.promise(() =>
        clientFor(fake).chat.completions.create({ model: "m", messages: [user("layer")] })
      )
      expect(result.choices[0]?.message.content).toBe("echo: layer")
    }))
})
