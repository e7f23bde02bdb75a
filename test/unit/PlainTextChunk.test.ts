/**
 * The hand-written fast check for text chunks must agree with the Schema:
 * whatever it accepts, the Schema decodes to the very same value.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck, Schema } from "effect"
import { ChatCompletionChunk, isPlainTextChunk } from "../../src/protocol/Chat.js"
import { acceptsOnlyDecodedValues } from "../support/GuardProperty.js"

const decode = Schema.decodeUnknownEither(ChatCompletionChunk)

const textChunk = {
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  created: 1,
  model: "gpt-4o-mini",
  choices: [{ index: 0, delta: { content: "Hello" }, finish_reason: null }]
}

describe("isPlainTextChunk", () => {
  it("accepts what OpenAI streams for text", () => {
    expect(isPlainTextChunk(textChunk)).toBe(true)
    expect(isPlainTextChunk({ ...textChunk, system_fingerprint: "fp", choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null, logprobs: null }] })).toBe(true)
  })

  it("leaves tool call deltas, usage, unknown fields and defaults to the Schema", () => {
    expect(isPlainTextChunk({ ...textChunk, usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } })).toBe(false)
    expect(isPlainTextChunk({ ...textChunk, extra: 1 })).toBe(false)
    expect(isPlainTextChunk({ ...textChunk, choices: [{ index: 0, delta: { tool_calls: [] }, finish_reason: null }] })).toBe(false)
    expect(isPlainTextChunk({ ...textChunk, choices: [{ index: 0, delta: {} }] })).toBe(false)
    expect(isPlainTextChunk({ ...textChunk, created: "1" })).toBe(false)
    expect(isPlainTextChunk({ ...textChunk, choices: [{ index: 0.5, delta: {}, finish_reason: null }] })).toBe(false)
  })

  it("whatever it accepts, the Schema decodes to the same value (generated chunks)", () => {
    acceptsOnlyDecodedValues(ChatCompletionChunk, isPlainTextChunk)
  })

  it("rejects every mutation of a text chunk that the Schema rejects", () => {
    const mutations = FastCheck.record({
      path: FastCheck.constantFrom("id", "object", "created", "model", "choices", "index", "delta", "content", "finish_reason"),
      value: FastCheck.oneof(FastCheck.string(), FastCheck.integer(), FastCheck.constant(null), FastCheck.constant(undefined), FastCheck.object(), FastCheck.array(FastCheck.integer()))
    })
    FastCheck.assert(
      FastCheck.property(mutations, ({ path, value }) => {
        const choice: Record<string, unknown> = { index: 0, delta: { content: "Hi" }, finish_reason: null }
        const chunk: Record<string, unknown> = { ...textChunk, choices: [choice] }
        if (path === "content") choice["delta"] = { content: value }
        else if (path === "index" || path === "delta" || path === "finish_reason") choice[path] = value
        else chunk[path] = value
        if (Either.isLeft(decode(chunk))) expect(isPlainTextChunk(chunk)).toBe(false)
      }),
      { numRuns: 2000 }
    )
  })
})
