/**
 * The offline model's embeddings: deterministic unit-length vectors in which
 * similar texts get similar vectors, and the embeddings response built from them.
 */
import type { EmbeddingResponse, UpstreamEmbeddingRequest } from "../../protocol/Embedding.js"
import { fnv1a } from "../../util/Hash.js"
import { mulberry32 } from "../../util/Prng.js"
import { countTokens } from "./Text.js"

// A second FNV-1a seed, for the sign of a feature independently of its index.
const SIGN_SEED = 0x9747b28c

/**
 * A deterministic unit-length embedding built by hashing features into the
 * vector: character trigrams and words of the normalised text (so similar
 * texts share features and get similar vectors) plus the exact text (so
 * different texts never coincide). Each feature adds ±weight at a hashed index.
 */
export const embed = (text: string, dimensions: number): Array<number> => {
  const vector = new Array<number>(dimensions).fill(0)
  const add = (feature: string, weight: number) => {
    const hash = fnv1a(feature)
    vector[hash % dimensions] = (vector[hash % dimensions] ?? 0) + (fnv1a(feature, SIGN_SEED) & 1 ? weight : -weight)
  }
  const normalised = ` ${text.toLowerCase().replace(/\s+/g, " ").trim()} `
  for (let i = 0; i + 3 <= normalised.length; i++) add(`c:${normalised.slice(i, i + 3)}`, 1)
  for (const word of normalised.match(/\w+/g) ?? []) add(`w:${word}`, 1)
  add(`t:${text}`, 0.5)

  const length = () => Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0))
  let norm = length()
  if (norm === 0) {
    // Features can cancel out in very small dimensions: fall back to a seeded random direction.
    const random = mulberry32(fnv1a(text))
    for (let i = 0; i < dimensions; i++) vector[i] = random() * 2 - 1
    norm = length()
  }
  if (norm === 0) {
    vector[0] = 1
    norm = 1
  }
  return vector.map((x) => x / norm)
}

/** The inputs of a request, as a list. */
export const inputsOf = (request: UpstreamEmbeddingRequest): ReadonlyArray<string> =>
  typeof request.input === "string" ? [request.input] : request.input

/** The response to an embeddings request: one vector per input, `dimensions` long unless the request asks for another length. */
export const respond = (request: UpstreamEmbeddingRequest, dimensions: number): EmbeddingResponse => {
  const inputs = inputsOf(request)
  const length = request.dimensions ?? dimensions
  const tokens = inputs.reduce((sum, input) => sum + countTokens(input), 0)
  return {
    object: "list",
    data: inputs.map((input, index) => ({ object: "embedding", index, embedding: embed(input, length) })),
    model: request.model,
    usage: { prompt_tokens: tokens, total_tokens: tokens }
  }
}
