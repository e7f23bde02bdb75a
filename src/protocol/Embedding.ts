/**
 * Embedding shapes: the `embedding` payload and OpenAI's embeddings response.
 */
import { Schema } from "effect"
import { optional } from "./Fields.js"
import { isRecord, onlyKeys } from "./Guards.js"

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
  jsonSchema: { type: "array", items: { type: "number" } },
  arbitrary: () => (fc) => fc.array(fc.double({ noNaN: true }))
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

const RESPONSE_KEYS: ReadonlySet<string> = new Set(Object.keys(EmbeddingResponse.fields))
const EMBEDDING_KEYS: ReadonlySet<string> = new Set(Object.keys(Embedding.fields))
const USAGE_KEYS: ReadonlySet<string> = new Set(["prompt_tokens", "total_tokens"])

/**
 * Whether a value is an embeddings response in exactly the shape
 * `EmbeddingResponse` decodes to (nothing to strip), checked by hand: such a
 * value is its own decoded and encoded form, so its JSON text can be sent on
 * as it came (see RawJson). Anything else goes through the Schema. A
 * property test holds the two together.
 */
export const isPlainEmbeddingResponse = (u: unknown): u is EmbeddingResponse => {
  if (!isRecord(u) || !onlyKeys(u, RESPONSE_KEYS)) return false
  if (typeof u.object !== "string" || typeof u.model !== "string" || !Array.isArray(u.data)) return false
  const usage = u.usage
  if (!isRecord(usage) || !onlyKeys(usage, USAGE_KEYS)) return false
  if (typeof usage.prompt_tokens !== "number" || typeof usage.total_tokens !== "number") return false
  for (const item of u.data) {
    if (!isRecord(item) || !onlyKeys(item, EMBEDDING_KEYS)) return false
    if (typeof item.object !== "string" || !Number.isSafeInteger(item.index) || !isVector(item.embedding)) return false
  }
  return true
}
