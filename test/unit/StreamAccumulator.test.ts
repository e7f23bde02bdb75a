/**
 * Assembling a streamed completion: text, finish reason, usage, and tool
 * calls whose deltas arrive split and interleaved.
 */
import { describe, expect, it } from "@effect/vitest"
import type { ChatCompletionChunk } from "../../src/protocol/Chat.js"
import { addUsage, StreamAccumulator } from "../../src/rpc/StreamAccumulator.js"

const chunk = (choices: ChatCompletionChunk["choices"], usage?: ChatCompletionChunk["usage"]): ChatCompletionChunk => ({
  id: "c",
  object: "chat.completion.chunk",
  created: 0,
  model: "m",
  choices,
  ...(usage ? { usage } : {})
})

describe("StreamAccumulator", () => {
  it("joins the text and keeps the last finish reason and the usage", () => {
    const accumulator = new StreamAccumulator()
    accumulator.add(chunk([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }]))
    accumulator.add(chunk([{ index: 0, delta: { content: "Hello" }, finish_reason: null }]))
    accumulator.add(chunk([{ index: 0, delta: { content: ", world" }, finish_reason: null }]))
    accumulator.add(chunk([{ index: 0, delta: {}, finish_reason: "stop" }]))
    accumulator.add(chunk([], { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 }))
    expect(accumulator.result()).toEqual({
      content: "Hello, world",
      finishReason: "stop",
      toolCalls: [],
      usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 }
    })
  })

  it("assembles parallel tool calls from interleaved deltas, in index order", () => {
    const accumulator = new StreamAccumulator()
    const delta = (toolCalls: NonNullable<ChatCompletionChunk["choices"][number]["delta"]["tool_calls"]>) =>
      chunk([{ index: 0, delta: { tool_calls: toolCalls }, finish_reason: null }])
    accumulator.add(delta([{ index: 1, id: "call_b", type: "function", function: { name: "calculator", arguments: "" } }]))
    accumulator.add(delta([{ index: 0, id: "call_a", type: "function", function: { name: "get_weather", arguments: "" } }]))
    accumulator.add(delta([{ index: 0, function: { arguments: "{\"loca" } }, { index: 1, function: { arguments: "{\"expr" } }]))
    accumulator.add(delta([{ index: 1, function: { arguments: "ession\":\"1+1\"}" } }]))
    accumulator.add(delta([{ index: 0, function: { arguments: "tion\":\"Oslo\"}" } }]))
    accumulator.add(chunk([{ index: 0, delta: {}, finish_reason: "tool_calls" }]))
    const result = accumulator.result()
    expect(result.finishReason).toBe("tool_calls")
    expect(result.content).toBe("")
    expect(result.toolCalls).toEqual([
      { id: "call_a", type: "function", function: { name: "get_weather", arguments: "{\"location\":\"Oslo\"}" } },
      { id: "call_b", type: "function", function: { name: "calculator", arguments: "{\"expression\":\"1+1\"}" } }
    ])
  })

  it("ignores choices other than the first", () => {
    const accumulator = new StreamAccumulator()
    accumulator.add(chunk([
      { index: 0, delta: { content: "a" }, finish_reason: null },
      { index: 1, delta: { content: "b" }, finish_reason: "length" }
    ]))
    expect(accumulator.result()).toMatchObject({ content: "a", finishReason: null })
  })

  it("adds usage across model calls", () => {
    const one = { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 }
    expect(addUsage(undefined, one)).toEqual(one)
    expect(addUsage(one, undefined)).toEqual(one)
    expect(addUsage(one, one)).toEqual({ prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 })
  })
})
