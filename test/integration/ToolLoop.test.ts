/**
 * The server-side tool loop (`auto_execute_tools`) over /ws: on the offline
 * model, against a scripted fake upstream, at its round limit, and when the
 * client cancels or leaves while a tool runs. Also the client-driven flow
 * without the loop.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Context, Deferred, Effect, Layer, Schema } from "effect"
import { AppConfig } from "../../src/config/AppConfig.js"
import type { ChatCompletionRequest } from "../../src/protocol/Chat.js"
import type { ServerFrame } from "../../src/protocol/Frames.js"
import type { ToolCall } from "../../src/protocol/Tools.js"
import * as AiBaseServer from "../../src/server/AiBaseServer.js"
import * as Tool from "../../src/tools/Tool.js"
import type { ToolRegistry } from "../../src/tools/ToolRegistry.js"
import {
  Behaviour,
  completion,
  type FakeOpenAI,
  FakeOpenAIService,
  type RecordedRequest,
  type ToolCallSpec,
  textChunks,
  toolCallChunks,
  usageOf
} from "../support/FakeOpenAI.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const connect = Effect.flatMap(TestServer.urls, ({ ws }) => WsClient.connect(ws))

type ChatPayload = typeof ChatCompletionRequest.Encoded
type Usage = { readonly prompt_tokens: number; readonly completion_tokens: number; readonly total_tokens: number }


/** Frame types with runs collapsed: chunk, chunk, tool_execution, chunk → chunk, tool_execution, chunk. */
const shape = (frames: ReadonlyArray<ServerFrame>): Array<string> =>
  frames.map((frame) => frame.type).filter((type, index, types) => index === 0 || types[index - 1] !== type)

const sumUsage = (usages: ReadonlyArray<Usage>): Usage => ({
  prompt_tokens: usages.reduce((n, u) => n + u.prompt_tokens, 0),
  completion_tokens: usages.reduce((n, u) => n + u.completion_tokens, 0),
  total_tokens: usages.reduce((n, u) => n + u.total_tokens, 0)
})

/** The usage of every chunk frame that carries one (one per model call). */
const chunkUsages = (frames: ReadonlyArray<ServerFrame>): Array<Usage> =>
  frames.filter(WsClient.frameOf("chat_completion_stream_chunk")).flatMap((frame) => frame.data.usage ? [frame.data.usage] : [])

const messagesOf = (request: RecordedRequest | undefined): ReadonlyArray<unknown> => {
  const messages = request?.fields["messages"]
  return Array.isArray(messages) ? messages : expect.fail("the request has no messages")
}

const asToolCall = (spec: ToolCallSpec): ToolCall => ({
  id: spec.id,
  type: "function",
  function: { name: spec.name, arguments: typeof spec.arguments === "string" ? spec.arguments : JSON.stringify(spec.arguments) }
})

const user = (content: string) => ({ role: "user" as const, content })

// ---------------------------------------------------------------------------
// A tool contributed by the test through a Layer: it blocks until interrupted
// and reports that it started and that it was interrupted.

interface Probe {
  readonly started: Deferred.Deferred<void>
  readonly interrupted: Deferred.Deferred<number>
}

class Probes extends Context.Tag("test/ToolLoop/Probes")<Probes, {
  /** The probe for a label, created on first use (by the test or the tool, whichever comes first). */
  readonly get: (label: string) => Effect.Effect<Probe>
}>() {
  static readonly layer = Layer.sync(Probes, () => {
    const probes = new Map<string, Probe>()
    return {
      get: (label) =>
        Effect.suspend(() => {
          const existing = probes.get(label)
          if (existing !== undefined) return Effect.succeed(existing)
          return Effect.map(
            Effect.all({ started: Deferred.make<void>(), interrupted: Deferred.make<number>() }),
            (probe) => {
              probes.set(label, probe)
              return probe
            }
          )
        })
    }
  })
}

const blockUntilInterrupted = Tool.make({
  name: "block_until_interrupted",
  description: "Test tool: never finishes on its own; records when it starts and when it is interrupted.",
  parameters: Schema.Struct({ label: Schema.String }),
  execute: ({ label }) =>
    Effect.flatMap(Probes, (probes) => probes.get(label)).pipe(
      Effect.flatMap((probe) =>
        Deferred.succeed(probe.started, undefined).pipe(
          Effect.zipRight(Effect.never),
          Effect.onInterrupt(() => Effect.flatMap(Effect.clockWith((clock) => clock.currentTimeMillis), (now) => Deferred.succeed(probe.interrupted, now)))
        )
      )
    )
})

/** How long the tool took to see its interruption after `since`, failing after 2 s. */
const interruptionDelay = (probe: Probe, since: number) =>
  Deferred.await(probe.interrupted).pipe(
    Effect.timeoutFail({ duration: "2 seconds", onTimeout: () => "the tool was not interrupted" }),
    Effect.map((at) => at - since)
  )

/** The built-in tools plus the blocking one, added from outside through `Tool.toLayer`. */
const toolsWithBlocking: Layer.Layer<ToolRegistry | Probes, never, AppConfig> = Tool.toLayer(blockUntilInterrupted).pipe(
  Layer.provideMerge(Layer.merge(AiBaseServer.layerTools, Probes.layer))
)

/** The real server with the tools of this file, against a fake upstream. */
const serverWithFakeUpstream = (env: Record<string, string>) => TestServer.withToolsAndFakeUpstream(toolsWithBlocking, env)

// ---------------------------------------------------------------------------

describe("server-side tool loop", () => {
  layer(TestServer.layer(), { excludeTestServices: true })("offline model", (it) => {
    const weatherInParis: ChatPayload = {
      messages: [user("What's the weather in Paris?")],
      tools: "registry",
      auto_execute_tools: true
    }

    it.scoped("chat_completion runs get_weather and answers in text, reporting the round", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const frames = yield* client.request({ type: "chat_completion", request_id: "loop", payload: weatherInParis })
        expect(frames).toHaveLength(1)
        const { data } = WsClient.only(frames, "chat_completion_response")
        const choice = data.choices[0]
        expect(choice?.finish_reason).toBe("stop")
        expect(choice?.message.tool_calls).toBeUndefined()
        expect(choice?.message.content).toContain("Paris")
        expect(choice?.message.content).toContain("get_weather")

        expect(data.tool_rounds).toHaveLength(1)
        const round = data.tool_rounds?.[0]
        expect(round?.round).toBe(1)
        expect(round?.executions).toHaveLength(1)
        const execution = round?.executions[0]
        expect(execution?.tool_call.function.name).toBe("get_weather")
        expect(JSON.parse(execution?.tool_call.function.arguments ?? "{}")).toEqual({ location: "Paris" })
        expect(execution?.result.tool_call_id).toBe(execution?.tool_call.id)
        expect(execution?.result.is_error).toBe(false)
        expect(execution?.result.content).toContain("Weather in Paris")
        // The answer is built from the tool's result.
        expect(choice?.message.content).toContain(execution?.result.content)

        // Usage is the sum of both model calls: the same two calls made by hand cost exactly that.
        const first = WsClient.only(
          yield* client.request({
            type: "chat_completion",
            request_id: "by-hand-1",
            payload: { messages: weatherInParis.messages, tools: "registry" }
          }),
          "chat_completion_response"
        ).data
        const second = WsClient.only(
          yield* client.request({
            type: "chat_completion",
            request_id: "by-hand-2",
            payload: {
              messages: [
                ...weatherInParis.messages,
                { role: "assistant", content: null, tool_calls: execution ? [execution.tool_call] : [] },
                { role: "tool", tool_call_id: execution?.tool_call.id ?? "", content: execution?.result.content ?? "" }
              ],
              tools: "registry"
            }
          }),
          "chat_completion_response"
        ).data
        expect(second.choices[0]?.message.content).toBe(choice?.message.content)
        if (first.usage == null || second.usage == null) return expect.fail("the offline model reports usage")
        expect(data.usage).toEqual(sumUsage([first.usage, second.usage]))
      }))

    it.scoped("chat_completion_stream: chunks, tool_execution, chunks, then one end frame with the rounds and summed usage", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const frames = yield* client.request({ type: "chat_completion_stream", request_id: "loop-s", payload: weatherInParis })
        expect(shape(frames)).toEqual([
          "chat_completion_stream_chunk",
          "tool_execution",
          "chat_completion_stream_chunk",
          "chat_completion_stream_end"
        ])
        expect(frames.filter(WsClient.frameOf("chat_completion_stream_end"))).toHaveLength(1)
        expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")

        const execution = WsClient.only(frames, "tool_execution")
        expect(execution.request_id).toBe("loop-s")
        expect(execution.data.tool_call.function.name).toBe("get_weather")
        expect(execution.data.result).toMatchObject({ tool_call_id: execution.data.tool_call.id, is_error: false })
        expect(execution.data.result.content).toContain("Paris")

        // The first round's chunks stream the call; the second round's the answer.
        const index = frames.indexOf(execution)
        const before = frames.slice(0, index).filter(WsClient.frameOf("chat_completion_stream_chunk"))
        const after = frames.slice(index + 1).filter(WsClient.frameOf("chat_completion_stream_chunk"))
        const streamedCall = before.flatMap((c) => c.data.choices.flatMap((ch) => ch.delta.tool_calls ?? []))
        expect(streamedCall[0]?.id).toBe(execution.data.tool_call.id)
        expect(streamedCall.map((d) => d.function?.arguments ?? "").join("")).toBe(execution.data.tool_call.function.arguments)
        const answer = after.map((c) => c.data.choices[0]?.delta.content ?? "").join("")

        const end = WsClient.only(frames, "chat_completion_stream_end").data
        expect(end.finish_reason).toBe("stop")
        expect(end.content).toBe(answer)
        expect(end.content).toContain("Paris")
        expect(end.tool_calls).toBeUndefined()
        expect(end.tool_rounds).toEqual([{ round: 1, executions: [execution.data] }])
        const usages = chunkUsages(frames)
        expect(usages).toHaveLength(2)
        expect(end.usage).toEqual(sumUsage(usages))
      }))

    it.scoped("max_tool_rounds outside 1..20 is a validation error", () =>
      Effect.gen(function*() {
        const client = yield* connect
        for (const [id, rounds] of [["r0", 0], ["r21", 21], ["r1.5", 1.5]] as const) {
          const frames = yield* client.request({
            type: "chat_completion",
            request_id: id,
            payload: { ...weatherInParis, max_tool_rounds: rounds }
          })
          const error = WsClient.only(frames, "error")
          expect(error.data.code).toBe("invalid_payload")
          expect(error.error).toContain("max_tool_rounds")
        }
      }))

    it.scoped("without auto_execute_tools the client drives: tool_calls, tool_execute, continuation, answer", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const question = [user("What's the weather in Paris?")]
        const first = WsClient.only(
          yield* client.request({ type: "chat_completion", request_id: "step1", payload: { messages: question, tools: "registry" } }),
          "chat_completion_response"
        ).data
        const assistant = first.choices[0]?.message
        expect(first.choices[0]?.finish_reason).toBe("tool_calls")
        expect(first.tool_rounds).toBeUndefined()
        const calls = assistant?.tool_calls ?? []
        expect(calls).toHaveLength(1)
        const [call] = calls
        if (call === undefined) return expect.fail("no tool call")
        expect(call.function.name).toBe("get_weather")

        const result = WsClient.only(
          yield* client.request({ type: "tool_execute", request_id: "step2", payload: { tool_call: call } }),
          "tool_execute_response"
        ).data
        expect(result).toMatchObject({ tool_call_id: call.id, is_error: false })

        const final = WsClient.only(
          yield* client.request({
            type: "chat_completion",
            request_id: "step3",
            payload: {
              messages: [
                ...question,
                { role: "assistant", content: assistant?.content ?? null, tool_calls: [...calls] },
                { role: "tool", tool_call_id: result.tool_call_id, content: result.content }
              ],
              tools: "registry"
            }
          }),
          "chat_completion_response"
        ).data
        expect(final.choices[0]?.finish_reason).toBe("stop")
        expect(final.choices[0]?.message.tool_calls).toBeUndefined()
        expect(final.choices[0]?.message.content).toContain("Based on get_weather")
        expect(final.choices[0]?.message.content).toContain(result.content)
      }))
  })

  layer(serverWithFakeUpstream({ TOOL_TIMEOUT_SECONDS: "30" }), { excludeTestServices: true })("fake upstream", (it) => {
    const freshFake = Effect.tap(FakeOpenAIService, (fake) => fake.reset())
    const calc: ToolCallSpec = { id: "call_calc", name: "calculator", arguments: { expression: "2+3" } }

    it.scoped("scripted rounds: the tool result goes back upstream and the response reports the round", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        fake.enqueue(
          Behaviour.json(completion({ toolCalls: [calc], usage: usageOf(10, 3) })),
          Behaviour.json(completion({ content: "2 + 3 is 5.", usage: usageOf(20, 5) }))
        )
        const client = yield* connect
        const question = [user("What is 2+3?")]
        const frames = yield* client.request({
          type: "chat_completion",
          request_id: "calc",
          payload: { messages: question, tools: "registry", auto_execute_tools: true }
        })
        const { data } = WsClient.only(frames, "chat_completion_response")

        expect(fake.requestCount).toBe(2)
        const [first, second] = fake.requests
        expect(messagesOf(first)).toEqual(question)
        expect(messagesOf(second)).toEqual([
          ...question,
          { role: "assistant", content: null, tool_calls: [asToolCall(calc)] },
          { role: "tool", tool_call_id: "call_calc", content: "2+3 = 5" }
        ])
        // The second call offers the same tools and options.
        expect(second?.fields["tools"]).toEqual(first?.fields["tools"])
        expect(second?.fields["model"]).toEqual(first?.fields["model"])

        expect(data.choices[0]?.message.content).toBe("2 + 3 is 5.")
        expect(data.choices[0]?.finish_reason).toBe("stop")
        expect(data.tool_rounds).toEqual([{
          round: 1,
          executions: [{ tool_call: asToolCall(calc), result: { tool_call_id: "call_calc", content: "2+3 = 5", is_error: false } }]
        }])
        expect(data.usage).toEqual({ prompt_tokens: 30, completion_tokens: 8, total_tokens: 38 })
      }))

    it.scoped("a failing tool's error result goes back upstream and the loop continues", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const divide: ToolCallSpec = { id: "call_div", name: "calculator", arguments: { expression: "1/0" } }
        fake.enqueue(Behaviour.json(completion({ toolCalls: [divide] })), Behaviour.json(completion({ content: "Cannot divide by zero." })))
        const client = yield* connect
        const frames = yield* client.request({
          type: "chat_completion",
          request_id: "div",
          payload: { messages: [user("1/0?")], tools: ["calculator"], auto_execute_tools: true }
        })
        const { data } = WsClient.only(frames, "chat_completion_response")
        expect(fake.requestCount).toBe(2)
        const toolMessage = messagesOf(fake.requests[1]).at(-1)
        expect(toolMessage).toMatchObject({ role: "tool", tool_call_id: "call_div", content: expect.stringMatching(/division by zero/i) })
        expect(data.tool_rounds?.[0]?.executions[0]?.result.is_error).toBe(true)
        expect(data.choices[0]?.message.content).toBe("Cannot divide by zero.")
      }))

    it.scoped("parallel calls in one round are all executed and answered in order", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const calls: ReadonlyArray<ToolCallSpec> = [
          calc,
          { id: "call_w", name: "get_weather", arguments: { location: "Oslo" } }
        ]
        fake.enqueue(Behaviour.stream(toolCallChunks(calls, { splitInto: 6, includeUsage: true })), Behaviour.stream(textChunks("Done.", { includeUsage: true })))
        const client = yield* connect
        const frames = yield* client.request({
          type: "chat_completion_stream",
          request_id: "par",
          payload: { messages: [user("both")], tools: "registry", auto_execute_tools: true }
        })
        expect(shape(frames)).toEqual([
          "chat_completion_stream_chunk",
          "tool_execution",
          "chat_completion_stream_chunk",
          "chat_completion_stream_end"
        ])
        const executions = frames.filter(WsClient.frameOf("tool_execution")).map((frame) => frame.data)
        expect(executions.map((e) => e.tool_call)).toEqual(calls.map(asToolCall))
        expect(executions.map((e) => e.result.tool_call_id)).toEqual(["call_calc", "call_w"])
        expect(executions[1]?.result.content).toContain("Oslo")

        expect(fake.requestCount).toBe(2)
        expect(messagesOf(fake.requests[1]).slice(1)).toEqual([
          { role: "assistant", content: null, tool_calls: calls.map(asToolCall) },
          { role: "tool", tool_call_id: "call_calc", content: "2+3 = 5" },
          { role: "tool", tool_call_id: "call_w", content: executions[1]?.result.content }
        ])
        const end = WsClient.only(frames, "chat_completion_stream_end").data
        expect(end.content).toBe("Done.")
        expect(end.finish_reason).toBe("stop")
        expect(end.tool_rounds).toEqual([{ round: 1, executions }])
        expect(end.usage).toEqual(sumUsage(chunkUsages(frames)))
      }))

    it.scoped("text the model streams alongside its calls goes back upstream in the assistant message", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        fake.enqueue(
          Behaviour.stream(toolCallChunks([calc], { content: "Let me compute that.", includeUsage: true })),
          Behaviour.stream(textChunks("It is 5.", { includeUsage: true }))
        )
        const client = yield* connect
        const frames = yield* client.request({
          type: "chat_completion_stream",
          request_id: "with-text",
          payload: { messages: [user("2+3?")], tools: ["calculator"], auto_execute_tools: true }
        })
        expect(fake.requestCount).toBe(2)
        expect(messagesOf(fake.requests[1]).at(-2)).toEqual({
          role: "assistant",
          content: "Let me compute that.",
          tool_calls: [asToolCall(calc)]
        })
        const end = WsClient.only(frames, "chat_completion_stream_end").data
        expect(end.finish_reason).toBe("stop")
        expect(end.content).toContain("It is 5.")
      }))

    it.scoped("a call to a tool not in the registry ends the loop and reaches the client as is", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const external: ToolCallSpec = { id: "call_ext", name: "lookup_order", arguments: { order_id: "A-1" } }
        const externalTool = { name: "lookup_order", parameters: { type: "object", properties: { order_id: { type: "string" } } } }
        fake.enqueue(Behaviour.json(completion({ toolCalls: [external] })))
        const client = yield* connect
        const frames = yield* client.request({
          type: "chat_completion",
          request_id: "ext",
          payload: { messages: [user("where is my order?")], tools: ["calculator", externalTool], auto_execute_tools: true }
        })
        const { data } = WsClient.only(frames, "chat_completion_response")
        expect(data.choices[0]?.finish_reason).toBe("tool_calls")
        expect(data.choices[0]?.message.tool_calls).toEqual([asToolCall(external)])
        expect(data.tool_rounds).toBeUndefined()
        expect(fake.requestCount).toBe(1)

        // A round mixing a registry tool and an unknown one runs neither.
        fake.reset()
        fake.enqueue(Behaviour.json(completion({ toolCalls: [calc, external] })))
        const mixed = WsClient.only(
          yield* client.request({
            type: "chat_completion",
            request_id: "mixed",
            payload: { messages: [user("both")], tools: ["calculator", externalTool], auto_execute_tools: true }
          }),
          "chat_completion_response"
        ).data
        expect(mixed.choices[0]?.message.tool_calls).toEqual([asToolCall(calc), asToolCall(external)])
        expect(mixed.tool_rounds).toBeUndefined()
        expect(fake.requestCount).toBe(1)

        // After a round of registry tools, an unknown call ends the loop with that round reported.
        fake.reset()
        fake.enqueue(Behaviour.json(completion({ toolCalls: [calc] })), Behaviour.json(completion({ toolCalls: [external] })))
        const later = WsClient.only(
          yield* client.request({
            type: "chat_completion",
            request_id: "later",
            payload: { messages: [user("sum then order")], tools: ["calculator", externalTool], auto_execute_tools: true }
          }),
          "chat_completion_response"
        ).data
        expect(later.choices[0]?.message.tool_calls).toEqual([asToolCall(external)])
        expect(later.tool_rounds?.map((round) => round.executions.map((e) => e.tool_call.id))).toEqual([["call_calc"]])
        expect(fake.requestCount).toBe(2)

        // Streamed: the unknown call is in the end frame, and nothing is executed.
        fake.reset()
        fake.enqueue(Behaviour.stream(toolCallChunks([external], { splitInto: 4 })))
        const streamed = yield* client.request({
          type: "chat_completion_stream",
          request_id: "ext-s",
          payload: { messages: [user("where is my order?")], tools: ["calculator", externalTool], auto_execute_tools: true }
        })
        const end = WsClient.only(streamed, "chat_completion_stream_end").data
        expect(streamed.filter(WsClient.frameOf("tool_execution"))).toHaveLength(0)
        expect(end.finish_reason).toBe("tool_calls")
        expect(end.tool_calls).toEqual([asToolCall(external)])
        expect(end.tool_rounds).toBeUndefined()
        expect(fake.requestCount).toBe(1)
      }))

    it.scoped("max_tool_rounds ends a model that keeps calling tools with finish_reason tool_rounds_exhausted", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        let n = 0
        fake.setDefault(Behaviour.respond(() => {
          n++
          return Behaviour.json(completion({ toolCalls: [{ ...calc, id: `call_${n}` }], usage: usageOf(1, 1) }))
        }))
        const client = yield* connect
        const frames = yield* client.request({
          type: "chat_completion",
          request_id: "limit",
          payload: { messages: [user("again and again")], tools: "registry", auto_execute_tools: true, max_tool_rounds: 2 }
        })
        const { data } = WsClient.only(frames, "chat_completion_response")
        expect(data.choices[0]?.finish_reason).toBe("tool_rounds_exhausted")
        expect(fake.requestCount).toBe(3)
        expect(data.tool_rounds?.map((round) => round.round)).toEqual([1, 2])
        expect(data.tool_rounds?.map((round) => round.executions[0]?.tool_call.id)).toEqual(["call_1", "call_2"])
        // The third call's request is not executed; it is what the model asked for last.
        expect(data.choices[0]?.message.tool_calls?.map((call) => call.id)).toEqual(["call_3"])
        expect(data.usage).toEqual(usageOf(3, 3))
        // Each round's calls and results are in the next request.
        expect(messagesOf(fake.requests[2])).toHaveLength(5)
      }))

    it.scoped("the default limit is 5 rounds", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        fake.setDefault(Behaviour.respond(() => Behaviour.json(completion({ toolCalls: [calc] }))))
        const client = yield* connect
        const frames = yield* client.request({
          type: "chat_completion",
          request_id: "default-limit",
          payload: { messages: [user("loop")], tools: "registry", auto_execute_tools: true }
        })
        const { data } = WsClient.only(frames, "chat_completion_response")
        expect(data.choices[0]?.finish_reason).toBe("tool_rounds_exhausted")
        expect(data.tool_rounds).toHaveLength(5)
        expect(fake.requestCount).toBe(6)
      }))

    it.scoped("the streamed loop stops at max_tool_rounds too, with one end frame", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        let n = 0
        fake.setDefault(Behaviour.respond(() => {
          n++
          return Behaviour.stream(toolCallChunks([{ ...calc, id: `call_s${n}` }], { splitInto: 3, includeUsage: true, usage: usageOf(2, 1) }))
        }))
        const client = yield* connect
        const frames = yield* client.request({
          type: "chat_completion_stream",
          request_id: "limit-s",
          payload: { messages: [user("again")], tools: "registry", auto_execute_tools: true, max_tool_rounds: 2 }
        })
        expect(fake.requestCount).toBe(3)
        expect(shape(frames)).toEqual([
          "chat_completion_stream_chunk",
          "tool_execution",
          "chat_completion_stream_chunk",
          "tool_execution",
          "chat_completion_stream_chunk",
          "chat_completion_stream_end"
        ])
        const end = WsClient.only(frames, "chat_completion_stream_end").data
        expect(end.finish_reason).toBe("tool_rounds_exhausted")
        expect(end.tool_rounds?.map((round) => round.round)).toEqual([1, 2])
        expect(end.tool_rounds?.flatMap((round) => round.executions.map((e) => e.result.content))).toEqual(["2+3 = 5", "2+3 = 5"])
        expect(end.tool_calls?.map((call) => call.id)).toEqual(["call_s3"])
        expect(end.usage).toEqual(usageOf(6, 3))
      }))

    it.scoped("tools_list includes a tool added through Tool.toLayer, and \"registry\" offers it", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const client = yield* connect
        const listed = WsClient.only(yield* client.request({ type: "tools_list", request_id: "list", payload: {} }), "tools_list_response").data
        expect(listed.tools.map((tool) => tool.name).sort()).toEqual([
          "block_until_interrupted",
          "calculator",
          "get_current_time",
          "get_weather"
        ])
        expect(listed.tools.find((tool) => tool.name === "block_until_interrupted")?.parameters).toMatchObject({
          required: ["label"],
          properties: { label: { type: "string" } }
        })
        yield* client.request({ type: "chat_completion", request_id: "offer", payload: { messages: [user("hi")], tools: "registry" } })
        expect(JSON.stringify(fake.lastRequest?.fields["tools"])).toContain("block_until_interrupted")
      }))

    /** Starts a loop whose model calls the blocking tool, and waits until the tool runs. */
    const startBlockingLoop = (
      client: WsClient.WsClient,
      type: "chat_completion" | "chat_completion_stream",
      requestId: string,
      label: string
    ) =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const probe = yield* Effect.flatMap(Probes, (probes) => probes.get(label))
        const call: ToolCallSpec = { id: `call_${label}`, name: "block_until_interrupted", arguments: { label } }
        fake.enqueue(type === "chat_completion" ? Behaviour.json(completion({ toolCalls: [call] })) : Behaviour.stream(toolCallChunks([call])))
        // Should the loop go on regardless, the next call would be answered at once.
        fake.setDefault(Behaviour.json(completion({ content: "should not be asked" })))
        client.send({
          type,
          request_id: requestId,
          payload: { messages: [user("block")], tools: "registry", auto_execute_tools: true }
        })
        yield* Wait.awaitEvent(Deferred.await(probe.started), { message: "the blocking tool to start" })
        expect(fake.requestCount).toBe(1)
        return { fake, probe }
      })

    /** The fake gets no further request within a short window. */
    const noFurtherUpstreamCall = (fake: FakeOpenAI) =>
      Wait.expectNothingWithin("100 millis", fake.awaitRequests(2), { message: "second upstream request" }).pipe(
        Effect.map(() => expect(fake.requestCount).toBe(1))
      )

    it.scoped("cancel while a tool runs: a cancelled error frame, the tool interrupted, no further upstream call", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const { fake, probe } = yield* startBlockingLoop(client, "chat_completion", "blocked", "cancel-whole")
        const cancelledAt = Date.now()
        const [response] = yield* client.request({ type: "cancel", request_id: "k", payload: { request_id: "blocked" } })
        expect(response?.type === "cancel_response" && response.data).toEqual({ request_id: "blocked", cancelled: true })
        expect(yield* interruptionDelay(probe, cancelledAt)).toBeLessThan(1000)

        const frames = yield* client.collect("blocked")
        expect(frames).toHaveLength(1)
        const error = WsClient.only(frames, "error")
        expect(error.data).toEqual({ category: "cancelled", code: "cancelled", retryable: false })
        yield* noFurtherUpstreamCall(fake)
        expect(client.frames.filter((frame) => frame.request_id === "blocked")).toHaveLength(1)
      }))

    it.scoped("cancel while a tool runs in a stream: chunks, then only the cancelled error frame", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const { fake, probe } = yield* startBlockingLoop(client, "chat_completion_stream", "blocked-s", "cancel-stream")
        const cancelledAt = Date.now()
        client.send({ type: "cancel", request_id: "ks", payload: { request_id: "blocked-s" } })
        expect(yield* interruptionDelay(probe, cancelledAt)).toBeLessThan(1000)

        const frames = yield* client.collect("blocked-s")
        expect(shape(frames)).toEqual(["chat_completion_stream_chunk", "error"])
        const error = frames.at(-1)
        expect(error?.type === "error" && error.data.category).toBe("cancelled")
        yield* noFurtherUpstreamCall(fake)
        expect(client.frames.filter((frame) => frame.request_id === "blocked-s")).toHaveLength(frames.length)
      }))

    it.scoped("a client that disconnects while a tool runs interrupts the tool; nothing more goes upstream", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const { fake, probe } = yield* startBlockingLoop(client, "chat_completion", "gone", "disconnect")
        const closedAt = Date.now()
        yield* client.close()
        expect(yield* interruptionDelay(probe, closedAt)).toBeLessThan(1000)
        yield* noFurtherUpstreamCall(fake)

        // The server is fine: a new connection is served.
        const next = yield* connect
        const [pong] = yield* next.request({ type: "ping", request_id: "after" })
        expect(pong?.type).toBe("pong")
      }))
  })
  layer(serverWithFakeUpstream({ TOOL_TIMEOUT_SECONDS: "0.3" }), { excludeTestServices: true })("tool timeout", (it) => {
    it.scoped("a tool past TOOL_TIMEOUT_SECONDS is interrupted, reported as an error result, and the loop goes on", () =>
      Effect.gen(function*() {
        const fake = yield* FakeOpenAIService
        const probe = yield* Effect.flatMap(Probes, (probes) => probes.get("timeout"))
        const call: ToolCallSpec = { id: "call_slow", name: "block_until_interrupted", arguments: { label: "timeout" } }
        fake.enqueue(Behaviour.json(completion({ toolCalls: [call] })), Behaviour.json(completion({ content: "The tool timed out." })))
        const client = yield* connect
        const startedAt = Date.now()
        const frames = yield* client.request({
          type: "chat_completion",
          request_id: "slow",
          payload: { messages: [user("block")], tools: "registry", auto_execute_tools: true }
        })
        const elapsed = Date.now() - startedAt
        expect(elapsed).toBeLessThan(3000)
        yield* interruptionDelay(probe, startedAt)
        const { data } = WsClient.only(frames, "chat_completion_response")
        const result = data.tool_rounds?.[0]?.executions[0]?.result
        expect(result).toMatchObject({ tool_call_id: "call_slow", is_error: true })
        expect(result?.content).toContain("block_until_interrupted")
        expect(result?.content).toMatch(/did not finish within/)
        expect(data.choices[0]?.message.content).toBe("The tool timed out.")
        expect(fake.requestCount).toBe(2)
        expect(messagesOf(fake.requests[1]).at(-1)).toEqual({ role: "tool", tool_call_id: "call_slow", content: result?.content })
      }))
  })
})
