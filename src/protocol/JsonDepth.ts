/**
 * A bound on how deeply a client's JSON may nest.
 *
 * `JSON.parse` itself is iterative and accepts any depth (a 1 MiB frame can
 * nest 500,000 arrays), but much of what runs after it recurses once per
 * level: Effect's `Inspectable.formatUnknown` (which Schema uses to print the
 * `actual` value of a parse failure), `JSON.stringify` (the offline model, the
 * openai SDK's request body), `structuredClone`, loggers. Each of those throws
 * `RangeError: Maximum call stack size exceeded` somewhere between about
 * 2,500 and 5,000 levels. Rejecting deep frames right after parsing keeps
 * every later step far inside its stack.
 *
 * The check here is iterative (an explicit stack, no recursion), so it is
 * safe on any input, and it stops at the first container that is too deep.
 */
import { ValidationError } from "./Errors.js"

/**
 * The deepest nesting a frame may have; the frame's own object is level 1.
 *
 * Real requests stay far below it: a chat request with multimodal content is
 * about 6 levels deep; tool `parameters` and `response_format` schemas add
 * two levels per nested JSON Schema object (`properties`, then the property),
 * and OpenAI accepts at most 10 nested schema levels, which comes to about
 * 30 levels for the whole frame. 64 leaves twice that, and is ~40 times
 * below the depth at which the first recursive consumer overflows.
 */
export const MAX_JSON_DEPTH = 64

/**
 * Whether `value` nests objects or arrays more than `maxDepth` levels deep.
 * A primitive has depth 0, `[]` and `{}` depth 1, `[[1]]` depth 2.
 *
 * Visits each container once and returns as soon as one is too deep; strings
 * and numbers are skipped without a look. Cycles (impossible in parsed JSON)
 * cannot make it loop forever: it would report them as too deep.
 */
export const jsonDepthExceeds = (value: unknown, maxDepth: number): boolean => {
  if (typeof value !== "object" || value === null) return false
  if (maxDepth < 1) return true
  // Two parallel stacks instead of [value, depth] pairs: no allocation per node.
  const values: Array<object> = [value]
  const depths: Array<number> = [1]
  while (values.length > 0) {
    const current = values.pop()!
    const depth = depths.pop()!
    if (Array.isArray(current)) {
      for (let i = 0; i < current.length; i++) {
        const item: unknown = current[i]
        if (typeof item === "object" && item !== null) {
          if (depth >= maxDepth) return true
          values.push(item)
          depths.push(depth + 1)
        }
      }
    } else {
      for (const key in current) {
        const item: unknown = (current as Record<string, unknown>)[key]
        if (typeof item === "object" && item !== null) {
          if (depth >= maxDepth) return true
          values.push(item)
          depths.push(depth + 1)
        }
      }
    }
  }
  return false
}

/**
 * Whether JSON text nests more than `maxDepth` levels deep, read from the text
 * itself without parsing it (brackets inside strings do not count). Use it to
 * refuse a frame before `JSON.parse` builds it; on malformed text the answer
 * is only about the brackets, and JSON.parse still has to judge the rest.
 */
export const jsonTextDepthExceeds = (text: string, maxDepth: number): boolean => {
  let depth = 0
  const length = text.length
  for (let i = 0; i < length; i++) {
    const c = text.charCodeAt(i)
    if (c === 0x22 /* " */) {
      // Jump over the string natively: to the next quote not escaped by an odd run of backslashes.
      let end = text.indexOf("\"", i + 1)
      while (end !== -1) {
        let backslashes = 0
        while (text.charCodeAt(end - 1 - backslashes) === 0x5c /* \ */) backslashes++
        if (backslashes % 2 === 0) break
        end = text.indexOf("\"", end + 1)
      }
      if (end === -1) return false
      i = end
    } else if (c === 0x5b /* [ */ || c === 0x7b /* { */) {
      if (++depth > maxDepth) return true
    } else if (c === 0x5d /* ] */ || c === 0x7d /* } */) {
      depth--
    }
  }
  return false
}

/** The error for a frame (or a part of one) nested deeper than `maxDepth`. */
export const tooDeep = (maxDepth: number = MAX_JSON_DEPTH, what = "The frame"): ValidationError =>
  new ValidationError({
    code: "too_deep",
    message: `${what} nests objects and arrays more than ${maxDepth} levels deep`
  })
