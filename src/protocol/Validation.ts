/**
 * Turning Schema parse failures into short messages a client can act on,
 * such as `payload.messages.0.role: Expected "user" | ..., actual "bogus"`.
 *
 * The value that failed comes from the client, so describing it must be safe
 * on anything a frame can hold. Effect's formatters are not: they print each
 * failure's `actual` value in full with `Inspectable.formatUnknown`, which
 * recurses once per nesting level (a few thousand nested arrays overflow the
 * stack) and prints a wide value whole (a 1 MiB array becomes a 1 MiB
 * message, once per failing union member). With `errors: "all"` a wide
 * invalid array also yields one issue per element, and formatting 500,000 of
 * them takes about a minute. So the issue tree is first copied with its
 * `actual` values replaced by short previews and cut to the first few
 * failures, then formatted; the result is bounded in size, and any failure
 * while formatting falls back to a plain sentence.
 */
import { type Effect, Either, ParseResult, Schema } from "effect"
import { ValidationError } from "./Errors.js"

/** The longest description; a longer one is cut with an ellipsis. */
export const MAX_DESCRIPTION_LENGTH = 1000
/** At most this many failures are described. */
const MAX_ISSUES = 10
/** The longest description of one failure (a big union's "Expected ..." is long). */
const MAX_ISSUE_LENGTH = 400
/** The longest preview of a failing value. */
const MAX_PREVIEW_LENGTH = 80
/** How deep a preview looks into a value before writing `…`. */
const MAX_PREVIEW_DEPTH = 3
/** The longest path segment (an object key from the client) that is shown whole. */
const MAX_KEY_LENGTH = 64
/** An issue tree deeper than this (only recursive Schemas make one) is not formatted. */
const MAX_ISSUE_DEPTH = 256

const FALLBACK = "The value does not have the expected shape"

export const describeParseError = (error: ParseResult.ParseError, prefix: ReadonlyArray<PropertyKey> = []): string => {
  try {
    const bounded = boundIssue(error.issue)
    const described = ParseResult.ArrayFormatter.formatIssueSync(bounded.issue)
      .slice(0, MAX_ISSUES)
      .map((issue) => withPath([...prefix, ...issue.path], truncate(issue.message, MAX_ISSUE_LENGTH)))
    const more = bounded.truncated ? "; and more" : ""
    return truncate(described.join("; ") + more, MAX_DESCRIPTION_LENGTH)
  } catch {
    return withPath(prefix, FALLBACK)
  }
}

export const validationError = (
  code: string,
  error: ParseResult.ParseError,
  prefix: ReadonlyArray<PropertyKey> = []
): ValidationError => new ValidationError({ code, message: describeParseError(error, prefix) })

const withPath = (path: ReadonlyArray<PropertyKey>, message: string): string =>
  path.length > 0 ? `${path.map(formatKey).join(".")}: ${message}` : message

const formatKey = (key: PropertyKey): string => truncate(String(key), MAX_KEY_LENGTH)

const truncate = (text: string, max: number): string => text.length <= max ? text : `${text.slice(0, max - 1)}…`

// ---------------------------------------------------------------------------
// a bounded copy of an issue tree

/**
 * Stands in for a failing value. Effect's formatter prints an object with its
 * own `toString` by calling it, so the preview is printed verbatim.
 */
class Preview {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text
  }
}

/**
 * Copies an issue tree with every `Type` issue's value (what the default
 * messages print) replaced by a preview, keeping only the first MAX_ISSUES
 * failures. Other issues keep their values: only custom message functions
 * read those.
 */
const boundIssue = (root: ParseResult.ParseIssue): { readonly issue: ParseResult.ParseIssue; truncated: boolean } => {
  let budget = MAX_ISSUES
  let truncated = false
  const go = (issue: ParseResult.ParseIssue, depth: number): ParseResult.ParseIssue | undefined => {
    if (depth > MAX_ISSUE_DEPTH) throw new Error("issue tree too deep")
    if (budget <= 0) {
      truncated = true
      return undefined
    }
    switch (issue._tag) {
      case "Type":
        budget--
        return new ParseResult.Type(issue.ast, previewValue(issue.actual), issue.message)
      case "Missing":
      case "Unexpected":
      case "Forbidden":
        budget--
        return issue
      case "Pointer": {
        const inner = go(issue.issue, depth + 1)
        return inner && new ParseResult.Pointer(issue.path, issue.actual, inner)
      }
      case "Refinement": {
        const inner = go(issue.issue, depth + 1)
        return inner && new ParseResult.Refinement(issue.ast, issue.actual, issue.kind, inner)
      }
      case "Transformation": {
        const inner = go(issue.issue, depth + 1)
        return inner && new ParseResult.Transformation(issue.ast, issue.actual, issue.kind, inner)
      }
      case "Composite": {
        if (!Array.isArray(issue.issues)) {
          const inner = go(issue.issues as ParseResult.ParseIssue, depth + 1)
          return inner && new ParseResult.Composite(issue.ast, issue.actual, inner, issue.output)
        }
        const kept: Array<ParseResult.ParseIssue> = []
        for (const child of issue.issues as ReadonlyArray<ParseResult.ParseIssue>) {
          const inner = go(child, depth + 1)
          if (inner === undefined) break
          kept.push(inner)
        }
        if (kept.length === 0) return undefined
        return new ParseResult.Composite(
          issue.ast,
          issue.actual,
          kept.length === 1 ? kept[0]! : (kept as [ParseResult.ParseIssue, ...Array<ParseResult.ParseIssue>]),
          issue.output
        )
      }
    }
  }
  const issue = go(root, 0)
  // The root always has at least one failure, and the budget starts above 0.
  return { issue: issue ?? root, truncated }
}

/**
 * Primitives are printed as Effect prints them (a short string as `"text"`);
 * containers and long strings become a bounded preview such as
 * `[[[[…]]]]` or `{"a":1,"b":[1,2,…]}`.
 */
const previewValue = (value: unknown): unknown => {
  if (typeof value === "string") {
    return value.length <= MAX_PREVIEW_LENGTH ? value : new Preview(JSON.stringify(value.slice(0, MAX_PREVIEW_LENGTH)) + "…")
  }
  if (typeof value !== "object" || value === null) return value
  return new Preview(preview(value))
}

/** A JSON-like rendering of at most MAX_PREVIEW_LENGTH characters (plus `…`). */
export const preview = (value: unknown): string => {
  let out = ""
  let full = false
  const write = (text: string): boolean => {
    if (full) return false
    if (out.length + text.length > MAX_PREVIEW_LENGTH) {
      out += text.slice(0, MAX_PREVIEW_LENGTH - out.length) + "…"
      full = true
      return false
    }
    out += text
    return true
  }
  // Recursion is bounded by MAX_PREVIEW_DEPTH, not by the value.
  const go = (v: unknown, depth: number): void => {
    if (full) return
    if (typeof v === "string") {
      write(JSON.stringify(v.length > MAX_PREVIEW_LENGTH ? v.slice(0, MAX_PREVIEW_LENGTH) : v))
      return
    }
    if (typeof v === "bigint") {
      write(`${v}n`)
      return
    }
    if (typeof v !== "object" || v === null) {
      write(String(v))
      return
    }
    const isArray = Array.isArray(v)
    if (!write(isArray ? "[" : "{")) return
    if (depth >= MAX_PREVIEW_DEPTH) {
      if (!write("…")) return
    } else if (isArray) {
      for (let i = 0; i < v.length && !full; i++) {
        if (i > 0 && !write(",")) return
        go(v[i], depth + 1)
      }
    } else {
      let first = true
      for (const key in v) {
        if (full) return
        if (!first && !write(",")) return
        first = false
        if (!write(`${JSON.stringify(key.length > MAX_PREVIEW_LENGTH ? key.slice(0, MAX_PREVIEW_LENGTH) : key)}:`)) return
        go((v as Record<string, unknown>)[key], depth + 1)
      }
    }
    write(isArray ? "]" : "}")
  }
  try {
    go(value, 0)
  } catch {
    return out + "…"
  }
  return out
}

/**
 * Schema's messages call `String()` on the values they describe, which
 * throws for an object whose own `toString` or `valueOf` is not a function,
 * and `JSON.parse` can make one (`{"toString": 1}`). Such a value is
 * invalid whatever the Schema: this is its description.
 */
const undescribable = (): ParseResult.ParseIssue =>
  new ParseResult.Type(
    Schema.Unknown.ast,
    undefined,
    "contains an object whose toString or valueOf is not a function"
  )

/** `decode`, with a throw from Schema's messages turned into a failure (see `undescribable`). */
export const decodeSafely = <A, E>(
  decode: (input: unknown) => Either.Either<A, E>,
  onThrow: (error: ParseResult.ParseError) => E
) =>
(input: unknown): Either.Either<A, E> => {
  try {
    return decode(input)
  } catch {
    return Either.left(onThrow(new ParseResult.ParseError({ issue: undescribable() })))
  }
}

/** `decodeSafely` for ParseResult's decoders (what transformations call). */
export const parseSafely = <A, R>(
  decode: (input: unknown) => Effect.Effect<A, ParseResult.ParseIssue, R>
) =>
(input: unknown): Effect.Effect<A, ParseResult.ParseIssue, R> => {
  try {
    return decode(input)
  } catch {
    return ParseResult.fail(undescribable())
  }
}
