/**
 * Field helpers shared by the protocol's Schemas.
 */
import { Schema } from "effect"

/**
 * An optional field that is either absent or present with a value (never
 * `undefined`), matching OpenAI's own parameter types.
 */
export const optional = <S extends Schema.Schema.All>(schema: S) => Schema.optionalWith(schema, { exact: true })
