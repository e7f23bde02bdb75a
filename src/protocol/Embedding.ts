/**
 * Embedding shapes: the `embedding` payload and OpenAI's embeddings response.
 */
import { Schema } from "effect"
import { optional } from "./Fields.js"

export const EmbeddingRequest = Schema.Struct({
  input: Schema.Union(
    Schema.String,
    Schema.mutable(Schema.Array(Schema.String)).pipe(Schema.minItems(1), Schema.maxItems(2048))
  ),
  model: optional(Schema.String.pipe(Schema.minLength(1))),
  dimensions: optional(Schema.Int.pipe(Schema.between(1, 4096))),
  user: optional(Schema.String)
})
export type EmbeddingRequest = typeof EmbeddingRequest.Type

/** A resolved request (model chosen), as a model layer receives it. */
export const UpstreamEmbeddingRequest = Schema.Struct({
  ...EmbeddingRequest.fields,
  model: Schema.String
})
export type UpstreamEmbeddingRequest = typeof UpstreamEmbeddingRequest.Type

const isVector = (value: unknown): value is ReadonlyArray<number> => {
  if (!Array.isArray(value)) return false
  for (const item of value) if (typeof item !== "number") return false
  return true
}

/**
 * An embedding vector: an array of numbers, checked in one loop. Embeddings
 * are thousands of numbers each, and checking them element by element
 * through the Schema parser cost more CPU than the whole rest of the request.
 */
export const Vector = Schema.declare(isVector, {
  identifier: "Vector",
  description: "an array of numbers",
  jsonSchema: { type: "array", items: { type: "number" } }
})

export const Embedding = Schema.Struct({
  object: Schema.String,
  index: Schema.Int,
  embedding: Vector
})

/** OpenAI's CreateEmbeddingResponse. */
export const EmbeddingResponse = Schema.Struct({
  object: Schema.String,
  data: Schema.Array(Embedding),
  model: Schema.String,
  usage: Schema.Struct({ prompt_tokens: Schema.Number, total_tokens: Schema.Number })
})
export type EmbeddingResponse = typeof EmbeddingResponse.Type
