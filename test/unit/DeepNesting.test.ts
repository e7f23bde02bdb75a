/**
 * Deeply nested and very wide client values, against the pure protocol
 * functions: the depth check every frame goes through, and the descriptions
 * of Schema failures that become validation errors.
 *
 * Effect's own formatters print a failure's `actual` value with
 * `Inspectable.formatUnknown`, which recurses once per nesting level: a few
 * thousand nested arrays overflow the stack (issue 11, item 1).
 */
import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck as fc, ParseResult, Schema } from "effect"
import type { ParseOptions } from "effect/SchemaAST"
import { ChatCompletionRequest } from "../../src/protocol/Chat.js"
import { EmbeddingRequest } from "../../src/protocol/Embedding.js"
import { ValidationError } from "../../src/protocol/Errors.js"
import { CancelRequest, RequestEnvelope } from "../../src/protocol/Frames.js"
import { jsonDepthExceeds, jsonTextDepthExceeds, MAX_JSON_DEPTH, tooDeep } from "../../src/protocol/JsonDepth.js"
import { JsonSchemaObject, ToolExecuteRequest } from "../../src/protocol/Tools.js"
import { describeParseError, MAX_DESCRIPTION_LENGTH, validationError } from "../../src/protocol/Validation.js"

/** `[[[...]]]`, `depth` arrays deep, built the way a frame is: by JSON.parse. */
const nested = (depth: number): unknown => JSON.parse("[".repeat(depth) + "]".repeat(depth))
/** `{"a":{"a":...}}`, `depth` objects deep. */
const nestedObject = (depth: number): unknown => JSON.parse("{\"a\":".repeat(depth) + "1" + "}".repeat(depth))

/** How the /ws adapter decodes payloads. */
const options = { errors: "all", onExcessProperty: "ignore" } as const

/** Decodes a value that must fail and describes the failure. */
const describeFailure = <A, I>(
  schema: Schema.Schema<A, I>,
  value: unknown,
  prefix: ReadonlyArray<string> = [],
  parseOptions: ParseOptions = options
) => {
  const result = Schema.decodeUnknownEither(schema, parseOptions)(value)
  if (Either.isRight(result)) throw new Error("expected a parse failure")
  return describeParseError(result.left, prefix)
}

const chat = (content: unknown) => ({ messages: [{ role: "user", content }] })
const toolCall = (fn: Record<string, unknown>) => ({ tool_call: { id: "c1", type: "function", function: fn } })

// The depth at which the reported crash happened, and well beyond (a 1 MiB frame nests 500,000 deep).
const DEPTHS = [3_000, 10_000, 100_000]

describe("describeParseError on deeply nested values", () => {
  // The envelope and a cancel's payload are decoded with the default options.
  const cases: ReadonlyArray<readonly [string, (value: unknown) => string, string | RegExp]> = [
    ["a frame that is only nesting", (v) => describeFailure(RequestEnvelope, v, [], {}), /Expected|is missing/],
    ["type", (v) => describeFailure(RequestEnvelope, { type: v, request_id: "r1" }, [], {}), "type: Expected string"],
    ["request_id", (v) => describeFailure(RequestEnvelope, { type: "ping", request_id: v }, [], {}), "request_id: Expected"],
    ["message content", (v) => describeFailure(ChatCompletionRequest, chat(v), ["payload"]), "payload.messages.0.content"],
    ["an embedding's input", (v) => describeFailure(EmbeddingRequest, { input: v }, ["payload"]), "payload.input"],
    ["a cancel's payload", (v) => describeFailure(CancelRequest, v, ["payload"], {}), /payload(\.request_id)?: (Expected|is missing)/],
    ["a cancel's request_id", (v) => describeFailure(CancelRequest, { request_id: v }, ["payload"], {}), "payload.request_id: Expected"],
    [
      "a tool call's arguments",
      (v) => describeFailure(ToolExecuteRequest, toolCall({ name: "calculator", arguments: v }), ["payload"]),
      "payload.tool_call.function.arguments: Expected string"
    ]
  ]

  for (const [where, describeIt, expected] of cases) {
    it(`describes deep nesting in ${where} without overflowing, briefly`, () => {
      for (const depth of DEPTHS) {
        for (const value of [nested(depth), nestedObject(depth)]) {
          const message = describeIt(value)
          if (typeof expected === "string") expect(message).toContain(expected)
          else expect(message).toMatch(expected)
          expect(message.length).toBeLessThanOrEqual(MAX_DESCRIPTION_LENGTH)
        }
      }
    })
  }

  it("shows a short preview of the nested value", () => {
    expect(describeFailure(EmbeddingRequest, { input: nested(3_000) }, ["payload"]))
      .toContain("payload.input: Expected string, actual [[[[…]]]]")
    expect(describeFailure(CancelRequest, { request_id: nestedObject(3_000) }))
      .toContain("request_id: Expected string, actual {\"a\":{\"a\":{\"a\":{…}}}}")
  })

  it("keeps the messages for ordinary mistakes as they were", () => {
    const role = describeFailure(ChatCompletionRequest, { messages: [{ role: "bogus", content: "hi" }] }, ["payload"])
    expect(role).toMatch(/^payload\.messages\.0\.role: Expected "system" \| "developer" \| .*actual "bogus"$/)
    expect(describeFailure(EmbeddingRequest, { input: "x", dimensions: "10" }, ["payload"]))
      .toBe("payload.dimensions: Expected number, actual \"10\"")
    expect(describeFailure(EmbeddingRequest, { input: "x", dimensions: 0 }))
      .toBe("dimensions: Expected a number between 1 and 4096, actual 0")
    expect(describeFailure(CancelRequest, {})).toBe("request_id: is missing")
    expect(describeFailure(EmbeddingRequest, { input: [1, 2], dimensions: [3] }))
      .toBe(
        "input: Expected string, actual [1,2]; input.0: Expected string, actual 1; input.1: Expected string, actual 2; " +
          "dimensions: Expected number, actual [3]"
      )
  })

  it("validationError carries the code and the bounded description", () => {
    const result = Schema.decodeUnknownEither(RequestEnvelope)(nested(10_000))
    if (Either.isRight(result)) throw new Error("expected a parse failure")
    const error = validationError("invalid_frame", result.left)
    expect(error).toBeInstanceOf(ValidationError)
    expect(error.code).toBe("invalid_frame")
    expect(error.category).toBe("validation")
    expect(error.message.length).toBeLessThanOrEqual(MAX_DESCRIPTION_LENGTH)
  })
})

describe("describeParseError on very wide and very long values", () => {
  it("describes an invalid array of 200,000 elements briefly, listing only the first failures", () => {
    const input = Array.from({ length: 200_000 }, (_, i) => i)
    const message = describeFailure(EmbeddingRequest, { input }, ["payload"])
    expect(message).toMatch(/^payload\.input: Expected string, actual \[0,1,2,3,.*…; payload\.input\.0: Expected string/)
    expect(message).toMatch(/; and more$/)
    expect(message.length).toBeLessThanOrEqual(MAX_DESCRIPTION_LENGTH)

    const messages = Array.from({ length: 50_000 }, () => 1)
    const chatMessage = describeFailure(ChatCompletionRequest, { messages }, ["payload"])
    expect(chatMessage).toContain("payload.messages.0: Expected")
    expect(chatMessage.length).toBeLessThanOrEqual(MAX_DESCRIPTION_LENGTH)
  })

  it("formats only the failures it shows (formatting 500,000 chat message failures took a minute)", () => {
    let formatted = 0
    const Counted = Schema.Array(Schema.String.annotations({
      message: () => {
        formatted++
        return "not a string"
      }
    }))
    const message = describeFailure(Counted, Array.from({ length: 100_000 }, (_, i) => i))
    expect(message).toMatch(/^0: not a string; 1: not a string; .*9: not a string; and more$/)
    expect(formatted).toBeLessThanOrEqual(10)
  })

  it("cuts long strings and long keys", () => {
    const long = describeFailure(EmbeddingRequest, { input: "x", dimensions: "9".repeat(1_000_000) })
    expect(long).toMatch(/^dimensions: Expected number, actual "9{80}"…$/)

    const key = "k".repeat(100_000)
    const record = Schema.Record({ key: Schema.String, value: Schema.Number })
    const keyed = describeFailure(record, { [key]: "nope" })
    expect(keyed.length).toBeLessThan(300)
    expect(keyed).toMatch(/^k{63}…: Expected number, actual "nope"$/)
  })

  it("falls back to a plain sentence when a custom message throws", () => {
    const hostile = Schema.String.annotations({
      message: () => {
        throw new Error("boom")
      }
    })
    expect(describeFailure(Schema.Struct({ a: hostile }), { a: 1 }, ["payload"]))
      .toBe("payload: The value does not have the expected shape")
  })

  it("describes a recursive Schema's deep issue tree without overflowing", () => {
    interface Tree {
      readonly children: ReadonlyArray<Tree>
    }
    const Tree: Schema.Schema<Tree> = Schema.Struct({
      children: Schema.Array(Schema.suspend((): Schema.Schema<Tree> => Tree))
    })
    const tree = (depth: number) => {
      let value: unknown = { children: 1 }
      for (let i = 0; i < depth; i++) value = { children: [value] }
      return value
    }
    // Decoding itself recurses with a recursive Schema (ParseResult's parser, ~5,000 levels
    // overflow it), so deep values must be refused before a recursive Schema sees them.
    expect(describeFailure(Tree, tree(3))).toBe("children.0.children.0.children.0.children: Expected ReadonlyArray<<suspended schema>>, actual 1")
    const deep = describeFailure(Tree, tree(1_000))
    expect(deep).toBe("The value does not have the expected shape")
  })
})

describe("tool parameters", () => {
  const withTools = (tools: unknown) => ({ messages: [{ role: "user", content: "hi" }], tools })

  it("rejects a tool whose parameters nest too deeply, in either tool shape, as a validation error", () => {
    const parameters = { type: "object", properties: { a: nested(6_000) } }
    const flat = describeFailure(ChatCompletionRequest, withTools([{ name: "deep", parameters }]), ["payload"])
    expect(flat).toContain("payload.tools.0.parameters: nests objects and arrays more than 64 levels deep")
    const openai = describeFailure(
      ChatCompletionRequest,
      withTools([{ type: "function", function: { name: "deep", parameters } }]),
      ["payload"]
    )
    expect(openai).toContain("payload.tools.0.function.parameters: nests objects and arrays more than 64 levels deep")
  })

  it("accepts realistic JSON Schemas, nested ten levels", () => {
    let schema: Record<string, unknown> = { type: "string" }
    for (let i = 0; i < 10; i++) schema = { type: "object", properties: { child: schema }, required: ["child"] }
    const decoded = Schema.decodeUnknownEither(ChatCompletionRequest, options)(withTools([{ name: "nested", parameters: schema }]))
    expect(Either.isRight(decoded)).toBe(true)
    expect(Either.isRight(Schema.decodeUnknownEither(JsonSchemaObject)(schema))).toBe(true)
  })

  it("draws the line at MAX_JSON_DEPTH", () => {
    const decode = Schema.decodeUnknownEither(JsonSchemaObject)
    // The parameters object itself is level 1.
    expect(Either.isRight(decode({ a: nested(MAX_JSON_DEPTH - 1) }))).toBe(true)
    expect(Either.isLeft(decode({ a: nested(MAX_JSON_DEPTH) }))).toBe(true)
  })
})

/** The depth of a JSON value by plain recursion (fine for the small values fast-check builds). */
const referenceDepth = (value: unknown): number => {
  if (typeof value !== "object" || value === null) return 0
  const children = Array.isArray(value) ? value : Object.values(value)
  return 1 + children.reduce((max: number, child) => Math.max(max, referenceDepth(child)), 0)
}

describe("jsonDepthExceeds", () => {
  it("measures depth with the frame's own object as level 1", () => {
    expect(jsonDepthExceeds("text", 0)).toBe(false)
    expect(jsonDepthExceeds(null, 0)).toBe(false)
    expect(jsonDepthExceeds([], 0)).toBe(true)
    expect(jsonDepthExceeds([], 1)).toBe(false)
    expect(jsonDepthExceeds({}, 1)).toBe(false)
    expect(jsonDepthExceeds([[1]], 1)).toBe(true)
    expect(jsonDepthExceeds([[1]], 2)).toBe(false)
    expect(jsonDepthExceeds({ a: [1, { b: null }] }, 2)).toBe(true)
    expect(jsonDepthExceeds({ a: [1, { b: null }] }, 3)).toBe(false)
    expect(jsonDepthExceeds([1, "two", [3, [4]], { five: { six: 6 } }], 3)).toBe(false)
    expect(jsonDepthExceeds([1, "two", [3, [4]], { five: { six: [] } }], 3)).toBe(true)
  })

  it("answers on any depth a frame can carry, without recursion", () => {
    for (const depth of [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 3_000, 500_000]) {
      expect(jsonDepthExceeds(nested(depth), MAX_JSON_DEPTH)).toBe(depth > MAX_JSON_DEPTH)
      expect(jsonDepthExceeds(nestedObject(depth), MAX_JSON_DEPTH)).toBe(depth > MAX_JSON_DEPTH)
      expect(jsonTextDepthExceeds("[".repeat(depth) + "]".repeat(depth), MAX_JSON_DEPTH)).toBe(depth > MAX_JSON_DEPTH)
    }
  })

  it("passes a typical chat request frame", () => {
    const frame = {
      type: "chat_completion",
      request_id: "req-1",
      payload: {
        messages: [
          { role: "system", content: "Be brief." },
          { role: "user", content: [{ type: "text", text: "What is this?" }, { type: "image_url", image_url: { url: "data:" } }] }
        ],
        tools: [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { a: { type: "array", items: { type: "string" } } } } } }],
        response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object" } } }
      }
    }
    expect(referenceDepth(frame)).toBeLessThan(12)
    expect(jsonDepthExceeds(frame, MAX_JSON_DEPTH)).toBe(false)
    expect(jsonTextDepthExceeds(JSON.stringify(frame), MAX_JSON_DEPTH)).toBe(false)
  })

  it("terminates on a cycle (reported as too deep)", () => {
    const cycle: Array<unknown> = []
    cycle.push(cycle)
    expect(jsonDepthExceeds(cycle, MAX_JSON_DEPTH)).toBe(true)
  })

  it("ignores brackets inside strings when reading text", () => {
    expect(jsonTextDepthExceeds(JSON.stringify({ a: "[[[[[[", b: "\"[[[[\\" }), 1)).toBe(false)
    expect(jsonTextDepthExceeds(JSON.stringify({ a: "]]]]]]" }) + "", 1)).toBe(false)
    expect(jsonTextDepthExceeds(JSON.stringify({ a: { b: "]]]]" } }), 1)).toBe(true)
  })

  it.prop("agrees with a recursive depth on random JSON, for values and for text", [
    fc.jsonValue({ maxDepth: 12 }),
    fc.integer({ min: 0, max: 14 })
  ], ([value, max]) => {
    const expected = referenceDepth(value) > max
    expect(jsonDepthExceeds(value, max)).toBe(expected)
    expect(jsonTextDepthExceeds(JSON.stringify(value), max)).toBe(expected)
  })

  it("tooDeep is a validation error with code too_deep", () => {
    const error = tooDeep()
    expect(error).toBeInstanceOf(ValidationError)
    expect(error.code).toBe("too_deep")
    expect(error.retryable).toBe(false)
    expect(error.message).toBe("The frame nests objects and arrays more than 64 levels deep")
  })
})

describe("Effect's own formatters (why the bounds above exist)", () => {
  it("the ParseError message still recurses into the value: never log a client ParseError whole", () => {
    const result = Schema.decodeUnknownEither(RequestEnvelope)(nested(100_000))
    if (Either.isRight(result)) throw new Error("expected a parse failure")
    const error = result.left
    // ArrayFormatter and TreeFormatter (the ParseError's message) print `actual` with Inspectable.formatUnknown.
    expect(() => ParseResult.ArrayFormatter.formatErrorSync(error)).toThrow(/Maximum call stack size exceeded/)
    expect(() => error.message).toThrow(/Maximum call stack size exceeded/)
  })
})
