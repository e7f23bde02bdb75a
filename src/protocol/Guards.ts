/**
 * The pieces of the hand-written guards that let the hot path skip a Schema
 * for values already in their exact wire shape (`isPlainTextChunk`,
 * `isPlainEmbeddingResponse`).
 */

/** A plain object (not null, not an array). */
export const isRecord = (u: unknown): u is { readonly [key: string]: unknown } =>
  typeof u === "object" && u !== null && !Array.isArray(u)

/** Whether every key of `record` is one of `allowed` (nothing a Schema would strip). */
export const onlyKeys = (record: { readonly [key: string]: unknown }, allowed: ReadonlySet<string>): boolean => {
  for (const key in record) if (!allowed.has(key)) return false
  return true
}
