/**
 * A tool the model can call: a name, a description, a Schema for its
 * parameters and an Effect that runs it. The JSON Schema the model sees is
 * derived from the parameter Schema, and arguments are decoded with it before
 * `execute` runs.
 *
 * The seed's Go interface maps onto this: Name() is `name`, Description() is
 * `description`, Parameters() is derived from `parameters`, and
 * Execute(ctx, args) is `execute(args)` (cancellation comes with the fiber).
 */
import { Effect, JSONSchema, Layer, Schema } from "effect"
import type { ToolDefinition } from "../protocol/Tools.js"
import { ToolRegistry } from "./ToolRegistry.js"

/** A failure a tool reports to the model (it becomes a ToolResult with is_error). */
export class ToolError extends Schema.TaggedError<ToolError>()("ToolError", {
  message: Schema.String
}) {}

export interface Tool<A, I, R> {
  readonly name: string
  readonly description: string
  readonly parameters: Schema.Schema<A, I>
  readonly execute: (args: A) => Effect.Effect<string, ToolError, R>
}

/** Defines a tool. Its type parameters are inferred from `parameters` and `execute`. */
export const make = <A, I, R = never>(tool: Tool<A, I, R>): Tool<A, I, R> => tool

/** The seed's ToolDefinition for a tool, with its JSON Schema derived from `parameters`. */
export const definition = <A, I, R>(tool: Tool<A, I, R>): ToolDefinition => {
  const { $schema: _, ...parameters } = JSONSchema.make(tool.parameters)
  return { name: tool.name, description: tool.description, parameters }
}

/**
 * A Layer that adds a tool to the ToolRegistry for as long as the Layer lives.
 * This is how an application contributes its own tool: no edits, no globals.
 * The services the tool needs become the Layer's requirements.
 */
export const toLayer = <A, I, R>(tool: Tool<A, I, R>): Layer.Layer<never, never, ToolRegistry | R> =>
  Layer.scopedDiscard(Effect.flatMap(ToolRegistry, (registry) => registry.register(tool)))
