/**
 * The hand-written check for embeddings answers in their exact wire shape
 * must agree with the Schema: whatever it accepts, the Schema decodes to the
 * very same value, so the answer's own JSON text can be sent on as it came.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck, Schema } from "effect"
import { EmbeddingResponse, isPlainEmbeddingResponse } from "../../src/protocol/Embedding.js"
import { acceptsOnlyDecodedValues } from "../support/GuardProperty.js"

const decode = Schema.decodeUnknownEither(EmbeddingResponse)

const answer = {
  object: "list",
  data: [{ object: "embedding", index: 0, embedding: [0.1, -0.2, 0.3] }],
  model: "text-embedding-3-small",
  usage: { prompt_tokens: 2, total_tokens: 2 }
}

describe("isPlainEmbeddingResponse", () => {
  it("accepts what OpenAI answers", () => {
    expect(isPlainEmbeddingResponse(answer)).toBe(true)
    expect(isPlainEmbeddingResponse({ ...answer, data: [] })).toBe(true)
  })

  it("leaves unknown fields and malformed answers to the Schema", () => {
    expect(isPlainEmbeddingResponse({ ...answer, extra: 1 })).toBe(false)
    expect(isPlainEmbeddingResponse({ ...answer, usage: { ...answer.usage, cost: 1 } })).toBe(false)
    expect(isPlainEmbeddingResponse({ ...answer, data: [{ ...answer.data[0], extra: true }] })).toBe(false)
    expect(isPlainEmbeddingResponse({ ...answer, data: [{ ...answer.data[0], embedding: [1, "2"] }] })).toBe(false)
    expect(isPlainEmbeddingResponse({ ...answer, data: [{ ...answer.data[0], index: 0.5 }] })).toBe(false)
    expect(isPlainEmbeddingResponse({ ...answer, usage: undefined })).toBe(false)
    expect(isPlainEmbeddingResponse({ ...answer, data: "base64" })).toBe(false)
    expect(isPlainEmbeddingResponse([answer])).toBe(false)
  })

  it("whatever it accepts, the Schema decodes to the same value (generated answers)", () => {
    acceptsOnlyDecodedValues(EmbeddingResponse, isPlainEmbeddingResponse)
  })

  it("rejects every mutation of an answer that the Schema rejects", () => {
    const mutations = FastCheck.record({
      path: FastCheck.constantFrom("object", "data", "model", "usage", "item", "index", "embedding", "prompt_tokens"),
      value: FastCheck.oneof(
        FastCheck.string(),
        FastCheck.integer(),
        FastCheck.double(),
        FastCheck.constant(null),
        FastCheck.constant(undefined),
        FastCheck.object(),
        FastCheck.array(FastCheck.oneof(FastCheck.double(), FastCheck.string()))
      )
    })
    FastCheck.assert(
      FastCheck.property(mutations, ({ path, value }) => {
        const item: Record<string, unknown> = { object: "embedding", index: 0, embedding: [0.5] }
        const usage: Record<string, unknown> = { prompt_tokens: 1, total_tokens: 1 }
        const response: Record<string, unknown> = { object: "list", data: [item], model: "m", usage }
        if (path === "item") response["data"] = [value]
        else if (path === "index" || path === "embedding") item[path] = value
        else if (path === "prompt_tokens") usage[path] = value
        else response[path] = value
        if (Either.isLeft(decode(response))) expect(isPlainEmbeddingResponse(response)).toBe(false)
      }),
      { numRuns: 2000 }
    )
  })
})
