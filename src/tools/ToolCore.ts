/**
 * What a tool is: a name, a description, a Schema for its parameters, an
 * Effect that runs it and, optionally, a Schema for its result. The JSON
 * Schema the model sees is derived from the parameter Schema, and arguments
 * are decoded with it before `execute` runs.
 *
 * The public `Tool` module re-exports this with `toLayer`; ToolRegistry
 * imports this module, not that one, so the two do not import each other.
 */
import { Effect, JSONSchema, Schema } from "effect"
import type { ToolDefinition } from "../protocol/Tools.js"

/** A failure a tool reports to the model (it becomes a ToolResult with is_error). */
export class ToolError extends Schema.TaggedError<ToolError>()("ToolError", {
  message: Schema.String
}) {}

interface Described<A, I> {
  readonly name: string
  readonly description: string
  readonly parameters: Schema.Schema<A, I>
}

/** A tool whose result is the tool message's content as it is. */
export interface TextTool<A, I, R> extends Described<A, I> {
  readonly success?: undefined
  readonly execute: (args: A) => Effect.Effect<string, ToolError, R>
}

/**
 * A tool with a structured result: `execute` returns a `success` value, and
 * the registry encodes it with `success` to JSON for the tool message's
 * content. A value `success` cannot encode becomes a tool error.
 */
export interface StructuredTool<A, I, R, S, SI> extends Described<A, I> {
  readonly success: Schema.Schema<S, SI>
  readonly execute: (args: A) => Effect.Effect<S, ToolError, R>
}

/**
 * A tool the model can call. The seed's Go interface maps onto it: Name() is
 * `name`, Description() is `description`, Parameters() is derived from
 * `parameters`, and Execute(ctx, args) is `execute(args)` (cancellation
 * comes with the fiber).
 */
export type Tool<A, I, R, S = string, SI = string> = TextTool<A, I, R> | StructuredTool<A, I, R, S, SI>

/** Defines a tool. Its type parameters are inferred from `parameters`, `success` and `execute`. */
export function make<A, I, R = never>(tool: TextTool<A, I, R>): TextTool<A, I, R>
export function make<A, I, S, SI, R = never>(tool: StructuredTool<A, I, R, S, SI>): StructuredTool<A, I, R, S, SI>
export function make<A, I, R, S, SI>(tool: Tool<A, I, R, S, SI>): Tool<A, I, R, S, SI> {
  return tool
}

/** The seed's ToolDefinition for a tool, with its JSON Schema derived from `parameters`. */
export const definition = <A, I, R, S, SI>(tool: Tool<A, I, R, S, SI>): ToolDefinition => {
  const { $schema: _, ...parameters } = JSONSchema.make(tool.parameters)
  return { name: tool.name, description: tool.description, parameters }
}
