/**
 * Property checks for the hand-written guards that let the hot path skip a
 * Schema (isPlainTextChunk, isPlainEmbeddingResponse): a guard may accept
 * less than its Schema, never more, and what it accepts must already be the
 * Schema's decoded value.
 */
import { expect } from "@effect/vitest"
import { Arbitrary, Either, FastCheck, Schema } from "effect"

/** Whatever `guard` accepts among values generated from the Schema's encoded side decodes to the very same value. */
export const acceptsOnlyDecodedValues = <A, I>(
  schema: Schema.Schema<A, I>,
  guard: (u: unknown) => boolean,
  numRuns = 2000
): void => {
  const decode = Schema.decodeUnknownEither(schema)
  FastCheck.assert(
    FastCheck.property(Arbitrary.make(Schema.encodedSchema(schema)), (value) => {
      if (!guard(value)) return
      const decoded = decode(value)
      expect(Either.isRight(decoded)).toBe(true)
      if (Either.isRight(decoded)) expect(decoded.right).toEqual(value)
    }),
    { numRuns }
  )
}
