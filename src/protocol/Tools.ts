/**
 * Tool-calling shapes shared by the protocol, the registry and the models:
 * the seed's ToolDefinition, ToolCall and ToolResult, and OpenAI's tool shape.
 */
import { Schema } from "effect"
import { optional } from "./Fields.js"
import { jsonDepthExceeds, MAX_JSON_DEPTH } from "./JsonDepth.js"

/**
 * A JSON Schema object, as the model sees a tool's parameters. Its content is
 * not checked, but its depth is: it is serialized (JSON.stringify, token
 * counting, the upstream request body) by code that recurses per level, so a
 * deeply nested one would fail there as an internal error instead of here
 * as a validation error.
 */
export const JsonSchemaObject = Schema.Record({ key: Schema.String, value: Schema.Unknown }).pipe(
  Schema.filter((schema) => !jsonDepthExceeds(schema, MAX_JSON_DEPTH), {
    message: () => `nests objects and arrays more than ${MAX_JSON_DEPTH} levels deep`,
    jsonSchema: {}
  })
)

/** The seed's ToolDefinition: the flat shape `{name, description, parameters}`. */
export const ToolDefinition = Schema.Struct({
  name: Schema.String.pipe(Schema.pattern(/^[a-zA-Z0-9_-]{1,64}$/, {
    message: () => "a tool name is 1-64 letters, digits, underscores or dashes"
  })),
  description: optional(Schema.String),
  parameters: optional(JsonSchemaObject)
})
export type ToolDefinition = typeof ToolDefinition.Type

/** OpenAI's shape of a function tool, which is what goes upstream. */
export const FunctionTool = Schema.Struct({
  type: Schema.Literal("function"),
  function: Schema.Struct({
    ...ToolDefinition.fields,
    strict: optional(Schema.NullOr(Schema.Boolean))
  })
})
export type FunctionTool = typeof FunctionTool.Type

/** A complete call of a function tool, as a model returns it. */
export const ToolCall = Schema.Struct({
  id: Schema.String,
  type: Schema.Literal("function"),
  function: Schema.Struct({
    name: Schema.String,
    /** The arguments as a JSON string, exactly as the model wrote them. */
    arguments: Schema.String
  })
})
export type ToolCall = typeof ToolCall.Type

/** The seed's ToolResult: what executing a tool call produced. */
export const ToolResult = Schema.Struct({
  tool_call_id: Schema.String,
  content: Schema.String,
  is_error: Schema.Boolean
})
export type ToolResult = typeof ToolResult.Type

/** One executed call and its result (the server-side tool loop reports these). */
export const ToolExecution = Schema.Struct({
  tool_call: ToolCall,
  result: ToolResult
})
export type ToolExecution = typeof ToolExecution.Type

/** One round of the server-side tool loop. */
export const ToolRound = Schema.Struct({
  round: Schema.Int,
  executions: Schema.Array(ToolExecution)
})
export type ToolRound = typeof ToolRound.Type

export const ToolsListResponse = Schema.Struct({
  tools: Schema.Array(ToolDefinition)
})

export const ToolExecuteRequest = Schema.Struct({
  tool_call: ToolCall
})
