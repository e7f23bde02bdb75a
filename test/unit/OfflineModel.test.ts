import { describe, expect, layer } from "@effect/vitest"
import { Chunk, Effect, Exit, Fiber, Layer, Option, Ref, Stream, TestClock } from "effect"
import { AppConfig } from "../../src/config/AppConfig.js"
import * as OfflineModel from "../../src/openai/OfflineModel.js"
import { OpenAi } from "../../src/openai/OpenAi.js"
import type { ChatCompletion, ChatCompletionChunk, ChatMessage, UpstreamChatRequest } from "../../src/protocol/Chat.js"
import type { FunctionTool } from "../../src/protocol/Tools.js"

const modelWith = (env: Record<string, string>) => OfflineModel.layerFromAppConfig.pipe(Layer.provide(AppConfig.layerFromEnv(env)))

const tool = (name: string): FunctionTool => ({
  type: "function",
  function: { name, description: `the ${name} tool`, parameters: { type: "object", properties: {} } }
})
const allTools = [tool("get_weather"), tool("get_current_time"), tool("calculator")]

const ask = (text: string, extra: Partial<UpstreamChatRequest> = {}): UpstreamChatRequest => ({
  model: "gpt-test",
  messages: [{ role: "system", content: "Be brief." }, { role: "user", content: text }],
  ...extra
})

const expectedText = (said: string) =>
  `[offline model] You said: "${said}". This reply comes from AIBase's built-in offline model; set OPENAI_API_KEY to use a real one.`

const complete = (request: UpstreamChatRequest) => Effect.flatMap(OpenAi, (ai) => ai.createChatCompletion(request))

const collect = (request: UpstreamChatRequest) =>
  Effect.flatMap(OpenAi, (ai) => Stream.runCollect(ai.streamChatCompletion(request))).pipe(Effect.map(Chunk.toArray))

const choiceOf = (completion: ChatCompletion) => {
  const choice = completion.choices[0]
  if (choice === undefined) throw new Error("no choice")
  return choice
}

const callsOf = (completion: ChatCompletion) =>
  (choiceOf(completion).message.tool_calls ?? []).map((call) => ({
    name: call.function.name,
    args: JSON.parse(call.function.arguments) as unknown
  }))

/** Reassembles streamed tool-call deltas by index, as a client would. */
const assembleCalls = (chunks: ReadonlyArray<ChatCompletionChunk>) => {
  const calls: Array<{ id: string; name: string; arguments: string }> = []
  for (const chunk of chunks) {
    for (const delta of chunk.choices[0]?.delta.tool_calls ?? []) {
      const call = calls[delta.index] ?? { id: "", name: "", arguments: "" }
      calls[delta.index] = {
        id: delta.id ?? call.id,
        name: delta.function?.name ?? call.name,
        arguments: call.arguments + (delta.function?.arguments ?? "")
      }
    }
  }
  return calls
}

const contentOf = (chunks: ReadonlyArray<ChatCompletionChunk>) =>
  chunks.map((chunk) => chunk.choices[0]?.delta.content ?? "").join("")

const norm = (vector: ReadonlyArray<number>) => Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0))
const cosine = (a: ReadonlyArray<number>, b: ReadonlyArray<number>) =>
  a.reduce((sum, x, i) => sum + x * (b[i] ?? 0), 0) / (norm(a) * norm(b))

layer(modelWith({ OFFLINE_WORD_DELAY_MS: "0" }))("OfflineModel", (it) => {
  it.effect("reports itself as the offline provider without a base URL", () =>
    Effect.gen(function*() {
      const ai = yield* OpenAi
      expect(ai.provider).toBe("offline")
      expect(ai.baseUrl).toBeUndefined()
    }))

  describe("chat", () => {
    it.effect("answers with deterministic text marked as offline", () =>
      Effect.gen(function*() {
        const first = yield* complete(ask("Hello there"))
        const second = yield* complete(ask("Hello there"))
        expect(first.object).toBe("chat.completion")
        expect(first.model).toBe("gpt-test")
        expect(first.id).toMatch(/^chatcmpl-offline-\d+$/)
        expect(second.id).not.toBe(first.id)
        expect(choiceOf(first).message.content).toBe(expectedText("Hello there"))
        expect(choiceOf(first).finish_reason).toBe("stop")
        expect(choiceOf(first).message.tool_calls).toBeUndefined()
        expect(second.choices).toEqual(first.choices)
        expect(second.usage).toEqual(first.usage)
        const usage = first.usage!
        expect(usage.prompt_tokens).toBeGreaterThan(0)
        expect(usage.completion_tokens).toBeGreaterThan(0)
        expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens)
      }))

    it.effect("quotes the last user message, joining text parts", () =>
      Effect.gen(function*() {
        const messages: Array<ChatMessage> = [
          { role: "user", content: "first question" },
          { role: "assistant", content: "an answer" },
          {
            role: "user",
            content: [{ type: "text", text: "look at" }, { type: "image_url", image_url: { url: "https://x/y.png" } }, {
              type: "text",
              text: "this"
            }]
          }
        ]
        const completion = yield* complete({ model: "m", messages })
        expect(choiceOf(completion).message.content).toBe(expectedText("look at this"))
      }))

    it.effect("streams the same text word by word, then a stop chunk and a usage chunk", () =>
      Effect.gen(function*() {
        const request = ask("Tell me something nice")
        const completion = yield* complete(request)
        const chunks = yield* collect(request)
        const first = chunks[0]!
        const stop = chunks[chunks.length - 2]!
        const usage = chunks[chunks.length - 1]!

        expect(first.object).toBe("chat.completion.chunk")
        expect(first.model).toBe("gpt-test")
        expect(first.choices[0]?.delta).toEqual({ role: "assistant", content: "" })
        expect(stop.choices[0]).toMatchObject({ delta: {}, finish_reason: "stop" })
        expect(usage.choices).toEqual([])
        expect(usage.usage).toEqual(completion.usage)
        expect(new Set(chunks.map((chunk) => chunk.id)).size).toBe(1)

        expect(contentOf(chunks)).toBe(choiceOf(completion).message.content)
        const wordChunks = chunks.slice(1, -2)
        expect(wordChunks.length).toBe(choiceOf(completion).message.content!.split(" ").length)
        for (const chunk of wordChunks) {
          expect(chunk.choices[0]?.delta.content?.trim()).toMatch(/^\S+$/)
          expect(chunk.choices[0]?.finish_reason).toBeNull()
        }
      }))
  })

  describe("embeddings", () => {
    const embed = (input: string | Array<string>, dimensions?: number) =>
      Effect.flatMap(OpenAi, (ai) =>
        ai.createEmbedding({ model: "emb-test", input, ...(dimensions === undefined ? {} : { dimensions }) }))

    it.effect("are deterministic unit vectors of the configured dimension", () =>
      Effect.gen(function*() {
        const first = yield* embed("The quick brown fox")
        const second = yield* embed("The quick brown fox")
        expect(first.object).toBe("list")
        expect(first.model).toBe("emb-test")
        expect(first.data).toHaveLength(1)
        const vector = first.data[0]!.embedding
        expect(vector).toHaveLength(256)
        expect(norm(vector)).toBeCloseTo(1, 10)
        expect(second.data[0]!.embedding).toEqual(vector)
        expect(first.usage.prompt_tokens).toBe(4)
        expect(first.usage.total_tokens).toBe(4)
      }))

    it.effect("honour dimensions, index array inputs and tell texts apart", () =>
      Effect.gen(function*() {
        const response = yield* embed(["The cat sat on the mat", "The cat sat on a mat", "Quarterly tax filing deadline"], 64)
        expect(response.data.map((item) => item.index)).toEqual([0, 1, 2])
        const [a, b, c] = response.data.map((item) => item.embedding)
        for (const vector of [a!, b!, c!]) {
          expect(vector).toHaveLength(64)
          expect(norm(vector)).toBeCloseTo(1, 10)
        }
        expect(a).not.toEqual(b)
        expect(a).not.toEqual(c)
        // Hashed n-gram features: similar texts are closer than unrelated ones.
        expect(cosine(a!, b!)).toBeGreaterThan(cosine(a!, c!))
        const tiny = yield* embed("", 1)
        expect(Math.abs(tiny.data[0]!.embedding[0]!)).toBeCloseTo(1, 10)
      }))
  })

  describe("tool calls", () => {
    it.effect("calls get_weather with the place after \"in\"", () =>
      Effect.gen(function*() {
        const completion = yield* complete(ask("What's the weather in San Francisco?", { tools: allTools }))
        const choice = choiceOf(completion)
        expect(choice.finish_reason).toBe("tool_calls")
        expect(choice.message.content).toBeNull()
        expect(choice.message.tool_calls?.[0]?.id).toMatch(/^call_offline_\d+$/)
        expect(choice.message.tool_calls?.[0]?.type).toBe("function")
        expect(callsOf(completion)).toEqual([{ name: "get_weather", args: { location: "San Francisco" } }])

        const paris = yield* complete(ask("what is the temperature in Paris, France today?", { tools: allTools }))
        expect(callsOf(paris)).toEqual([{ name: "get_weather", args: { location: "Paris, France" } }])
        const nowhere = yield* complete(ask("Give me the forecast", { tools: allTools }))
        expect(callsOf(nowhere)).toEqual([{ name: "get_weather", args: { location: "San Francisco" } }])
      }))

    it.effect("calls get_current_time with an IANA zone when there is one", () =>
      Effect.gen(function*() {
        const tokyo = yield* complete(ask("What time is it in Asia/Tokyo?", { tools: allTools }))
        expect(callsOf(tokyo)).toEqual([{ name: "get_current_time", args: { timezone: "Asia/Tokyo" } }])
        const plain = yield* complete(ask("What's the date today?", { tools: allTools }))
        expect(callsOf(plain)).toEqual([{ name: "get_current_time", args: {} }])
      }))

    it.effect("calls calculator with the arithmetic expression", () =>
      Effect.gen(function*() {
        const simple = yield* complete(ask("What is 2 + 3 * 4?", { tools: allTools }))
        expect(callsOf(simple)).toEqual([{ name: "calculator", args: { expression: "2 + 3 * 4" } }])
        const fancy = yield* complete(ask("Please calculate sqrt(16) + (2.5 * 4) for me", { tools: allTools }))
        expect(callsOf(fancy)).toEqual([{ name: "calculator", args: { expression: "sqrt(16) + (2.5 * 4)" } }])
        const prose = yield* complete(ask("I have 3 cats and 2 dogs", { tools: allTools }))
        expect(choiceOf(prose).finish_reason).toBe("stop")
      }))

    it.effect("makes parallel calls unless parallel_tool_calls is false", () =>
      Effect.gen(function*() {
        const text = "What's the weather in Paris and what time is it in Europe/Paris?"
        const both = yield* complete(ask(text, { tools: allTools }))
        expect(callsOf(both)).toEqual([
          { name: "get_weather", args: { location: "Paris" } },
          { name: "get_current_time", args: { timezone: "Europe/Paris" } }
        ])
        const ids = choiceOf(both).message.tool_calls!.map((call) => call.id)
        expect(new Set(ids).size).toBe(2)
        const one = yield* complete(ask(text, { tools: allTools, parallel_tool_calls: false }))
        expect(callsOf(one)).toEqual([{ name: "get_weather", args: { location: "Paris" } }])
      }))

    it.effect("streams tool-call deltas that reassemble into the same calls", () =>
      Effect.gen(function*() {
        for (const text of ["What's the weather in San Francisco?", "What time is it in America/New_York?", "What is (1 + 2) * 3.5?"]) {
          const request = ask(text, { tools: allTools })
          const completion = yield* complete(request)
          const chunks = yield* collect(request)
          const expected = choiceOf(completion).message.tool_calls!
          const assembled = assembleCalls(chunks)
          expect(assembled.map(({ arguments: args, name }) => ({ name, arguments: args }))).toEqual(
            expected.map((call) => ({ name: call.function.name, arguments: call.function.arguments }))
          )
          expect(assembled[0]?.id).toMatch(/^call_offline_\d+$/)
          // The header delta names the call with empty arguments; the arguments follow in several pieces.
          expect(chunks[0]?.choices[0]?.delta).toEqual({
            role: "assistant",
            content: null,
            tool_calls: [{ index: 0, id: assembled[0]!.id, type: "function", function: { name: expected[0]!.function.name, arguments: "" } }]
          })
          expect(chunks.filter((chunk) => chunk.choices[0]?.delta.tool_calls?.[0]?.function?.arguments).length)
            .toBeGreaterThan(1)
          expect(chunks[chunks.length - 2]?.choices[0]).toMatchObject({ delta: {}, finish_reason: "tool_calls" })
          expect(chunks[chunks.length - 1]?.choices).toEqual([])
          expect(chunks[chunks.length - 1]?.usage).toEqual(completion.usage)
        }
      }))

    it.effect("answers in text when no matching tool is offered or tool_choice is none", () =>
      Effect.gen(function*() {
        const question = "What's the weather in Oslo?"
        for (
          const request of [
            ask(question),
            ask(question, { tools: [tool("calculator")] }),
            ask(question, { tools: allTools, tool_choice: "none" })
          ]
        ) {
          const completion = yield* complete(request)
          expect(choiceOf(completion).finish_reason).toBe("stop")
          expect(choiceOf(completion).message.content).toBe(expectedText(question))
        }
      }))

    it.effect("answers from the trailing tool results", () =>
      Effect.gen(function*() {
        const messages: Array<ChatMessage> = [
          { role: "user", content: "What's the weather in Paris and the time in Europe/Paris?" },
          {
            role: "assistant",
            content: null,
            tool_calls: [
              { id: "call_a", type: "function", function: { name: "get_weather", arguments: "{\"location\":\"Paris\"}" } },
              { id: "call_b", type: "function", function: { name: "get_current_time", arguments: "{}" } }
            ]
          },
          { role: "tool", tool_call_id: "call_a", content: "Sunny, 21°C" },
          { role: "tool", tool_call_id: "call_b", content: [{ type: "text", text: "14:05" }] }
        ]
        const request: UpstreamChatRequest = { model: "m", messages, tools: allTools }
        const completion = yield* complete(request)
        expect(choiceOf(completion).finish_reason).toBe("stop")
        expect(choiceOf(completion).message.content).toBe(
          "[offline model] Based on get_weather: Sunny, 21°C Based on get_current_time: 14:05"
        )
        expect(contentOf(yield* collect(request))).toBe(choiceOf(completion).message.content)
      }))

    it.effect("honours a forced tool_choice", () =>
      Effect.gen(function*() {
        const named = yield* complete(ask("What's the weather in Rome?", {
          tools: allTools,
          tool_choice: { type: "function", function: { name: "get_current_time" } }
        }))
        expect(callsOf(named)).toEqual([{ name: "get_current_time", args: {} }])

        const required = yield* complete(ask("Hi!", { tools: allTools, tool_choice: "required" }))
        expect(callsOf(required)).toEqual([{ name: "get_weather", args: {} }])

        const best = yield* complete(ask("Compute 6 * 7", { tools: allTools, tool_choice: "required" }))
        expect(callsOf(best)).toEqual([{ name: "calculator", args: { expression: "6 * 7" } }])
      }))
  })

  describe("offline:fail", () => {
    it.effect("fails with the named category's error", () =>
      Effect.gen(function*() {
        const ai = yield* OpenAi
        const error = yield* Effect.flip(complete(ask("offline:fail:rate_limit")))
        expect(error._tag).toBe("RateLimitError")
        expect(error.category).toBe("rate_limit")
        expect(error.retryable).toBe(true)

        const streamed = yield* Effect.flip(Stream.runCollect(ai.streamChatCompletion(ask("offline:fail:upstream"))))
        expect(streamed._tag).toBe("UpstreamError")

        const embedding = yield* Effect.flip(ai.createEmbedding({ model: "e", input: ["ok", "offline:fail:timeout"] }))
        expect(embedding._tag).toBe("TimeoutError")

        const unknown = yield* complete(ask("offline:fail:nonsense"))
        expect(choiceOf(unknown).message.content).toBe(expectedText("offline:fail:nonsense"))
      }))
  })
})

layer(modelWith({ OFFLINE_WORD_DELAY_MS: "1000" }))("OfflineModel pacing", (it) => {
  it.effect("sleeps the word delay between words", () =>
    Effect.gen(function*() {
      const ai = yield* OpenAi
      const request = ask("pace me")
      const words = choiceOf(yield* ai.createChatCompletion(request)).message.content!.split(" ").length
      const fiber = yield* Effect.fork(Stream.runCollect(ai.streamChatCompletion(request)))
      yield* TestClock.adjust(`${(words - 1) * 1000 - 1} millis`)
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust("1 millis")
      const chunks = Chunk.toArray(yield* Fiber.join(fiber))
      expect(chunks).toHaveLength(words + 3)
    }))

  it.effect("stops when interrupted mid-way", () =>
    Effect.gen(function*() {
      const ai = yield* OpenAi
      const request = ask("this stream will be cut short")

      // The role chunk and the first word need no sleep, so take(2) ends without the clock moving.
      const firstTwo = Chunk.toArray(yield* Stream.runCollect(Stream.take(ai.streamChatCompletion(request), 2)))
      expect(firstTwo[1]?.choices[0]?.delta.content).toBe("[offline ")

      const seen = yield* Ref.make(0)
      const fiber = yield* Effect.fork(Stream.runForEach(ai.streamChatCompletion(request), () => Ref.update(seen, (n) => n + 1)))
      yield* TestClock.adjust("2500 millis")
      const before = yield* Ref.get(seen)
      expect(before).toBe(4)
      const exit = yield* Fiber.interrupt(fiber)
      expect(Exit.isInterrupted(exit)).toBe(true)
      yield* TestClock.adjust("1 minute")
      expect(yield* Ref.get(seen)).toBe(before)
    }))
})
