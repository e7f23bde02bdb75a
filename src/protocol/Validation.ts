/**
 * Turning Schema parse failures into short messages a client can act on,
 * such as `payload.messages.0.role: Expected "user" | ..., actual "bogus"`.
 */
import { ParseResult } from "effect"
import { ValidationError } from "./Errors.js"

export const describeParseError = (error: ParseResult.ParseError, prefix: ReadonlyArray<PropertyKey> = []): string =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => {
      const path = [...prefix, ...issue.path]
      return path.length > 0 ? `${path.join(".")}: ${issue.message}` : issue.message
    })
    .join("; ")

export const validationError = (
  code: string,
  error: ParseResult.ParseError,
  prefix: ReadonlyArray<PropertyKey> = []
): ValidationError => new ValidationError({ code, message: describeParseError(error, prefix) })
