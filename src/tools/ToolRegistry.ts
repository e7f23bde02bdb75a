/**
 * The tools the server can run, and the one place tool calls are executed.
 *
 * The registry is a service instance, not a global: tools join it through
 * Layers (`ToolRegistry.layerTool`) and leave when their Layer's scope closes.
 * A tool's result becomes the tool message's content: a string as it is, a
 * structured result encoded to JSON with the tool's `success` Schema.
 */
import { Context, Duration, Effect, Layer, Option, Schema, type Scope } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { jsonDepthExceeds, MAX_JSON_DEPTH } from "../protocol/JsonDepth.js"
import { describeParseError } from "../protocol/Validation.js"
import type { ToolCall, ToolDefinition, ToolResult } from "../protocol/Tools.js"
import * as Tool from "./ToolCore.js"

/** A registered tool with its types erased: JSON arguments in, text out. */
interface Entry {
  readonly definition: ToolDefinition
  readonly run: (argumentsJson: string) => Effect.Effect<string, Tool.ToolError>
}

export interface ToolRegistryOptions {
  /** How long one tool call may run before it becomes an error result (TOOL_TIMEOUT_SECONDS). Default 10 seconds. */
  readonly toolTimeout?: Duration.DurationInput | undefined
}

export class ToolRegistry extends Context.Tag("aibase/ToolRegistry")<ToolRegistry, {
  /** Adds a tool until the current scope closes. Dies if the name is taken. */
  readonly register: <A, I, R, S, SI>(tool: Tool.Tool<A, I, R, S, SI>) => Effect.Effect<void, never, Scope.Scope | R>
  readonly definitions: Effect.Effect<ReadonlyArray<ToolDefinition>>
  readonly lookup: (name: string) => Effect.Effect<Option.Option<ToolDefinition>>
  /**
   * Runs a call. Never fails: an unknown tool, bad arguments, a tool failure
   * and a timeout all become a ToolResult with `is_error: true`.
   */
  readonly execute: (call: ToolCall) => Effect.Effect<ToolResult>
}>() {
  static readonly make = (options: ToolRegistryOptions = {}) => Effect.gen(function*() {
    const toolTimeout = Duration.decode(options.toolTimeout ?? Duration.seconds(10))
    const entries = new Map<string, Entry>()

    const register = <A, I, R, S, SI>(tool: Tool.Tool<A, I, R, S, SI>): Effect.Effect<void, never, Scope.Scope | R> =>
      Effect.gen(function*() {
        const context = yield* Effect.context<R>()
        const decode = Schema.decodeUnknown(tool.parameters, { errors: "all" })
        const invalid = (why: string) => new Tool.ToolError({ message: `Invalid arguments for ${tool.name}: ${why}` })
        const execute = contentOf(tool)
        const entry: Entry = {
          definition: Tool.definition(tool),
          run: (argumentsJson) =>
            Effect.suspend(() => {
              let json: unknown
              try {
                json = JSON.parse(argumentsJson)
              } catch (error) {
                return Effect.fail(invalid(`not valid JSON (${error instanceof Error ? error.message : String(error)})`))
              }
              // Parsing accepts any depth; describing or serializing a deep value would not.
              if (jsonDepthExceeds(json, MAX_JSON_DEPTH)) {
                return Effect.fail(invalid(`nested more than ${MAX_JSON_DEPTH} levels deep`))
              }
              return decode(json).pipe(Effect.mapError((error) => invalid(describeParseError(error))))
            }).pipe(
              Effect.flatMap(execute),
              Effect.provide(context)
            )
        }
        // The check and the set happen in one synchronous step, so two
        // registrations of a name cannot both pass the check; acquireRelease
        // installs the finalizer together with the entry (no interruption in
        // between), and the finalizer removes this entry only, never a later
        // registration of the same name.
        yield* Effect.acquireRelease(
          Effect.suspend(() => {
            if (entries.has(tool.name)) {
              return Effect.dieMessage(`A tool named "${tool.name}" is already registered`)
            }
            entries.set(tool.name, entry)
            return Effect.void
          }),
          () =>
            Effect.sync(() => {
              if (entries.get(tool.name) === entry) entries.delete(tool.name)
            })
        )
      })

    const execute = (call: ToolCall): Effect.Effect<ToolResult> => Effect.suspend(() => {
      const entry = entries.get(call.function.name)
      const result = (content: string, isError: boolean): ToolResult => ({
        tool_call_id: call.id,
        content,
        is_error: isError
      })
      if (entry === undefined) {
        const known = [...entries.keys()].join(", ") || "none"
        return Effect.succeed(result(`Unknown tool "${call.function.name}". Available tools: ${known}.`, true))
      }
      // Some providers send "" for a call without arguments.
      const args = call.function.arguments.trim() === "" ? "{}" : call.function.arguments
      return entry.run(args).pipe(
        Effect.timeoutFail({
          duration: toolTimeout,
          onTimeout: () =>
            new Tool.ToolError({
              message: `${call.function.name} did not finish within ${Duration.format(toolTimeout)}`
            })
        }),
        Effect.map((content) => result(content, false)),
        Effect.catchAll((error) => Effect.succeed(result(error.message, true))),
        Effect.catchAllDefect((defect) =>
          Effect.logError("tool crashed", defect).pipe(
            Effect.as(result(`${call.function.name} failed unexpectedly`, true))
          )
        ),
        Effect.withLogSpan(`tool.${call.function.name}`)
      )
    })

    return ToolRegistry.of({
      register,
      definitions: Effect.sync(() => [...entries.values()].map((entry) => entry.definition)),
      lookup: (name) => Effect.sync(() => Option.fromNullable(entries.get(name)?.definition)),
      execute
    })
  })

  /** An empty registry; tools join it through `ToolRegistry.layerTool`. */
  static readonly layer = (options: ToolRegistryOptions = {}): Layer.Layer<ToolRegistry> =>
    Layer.effect(ToolRegistry, ToolRegistry.make(options))

  /** TOOL_TIMEOUT_SECONDS, from AppConfig (the standalone server's assembly). */
  static readonly layerFromAppConfig: Layer.Layer<ToolRegistry, never, AppConfig> = Layer.unwrapEffect(
    Effect.map(AppConfig, (config) => ToolRegistry.layer({ toolTimeout: config.toolTimeout }))
  )

  /**
   * A Layer that adds a tool to the registry for as long as the Layer lives.
   * This is how an application contributes its own tool: no edits, no
   * globals. The services the tool needs become the Layer's requirements.
   */
  static readonly layerTool = <A, I, R, S, SI>(tool: Tool.Tool<A, I, R, S, SI>): Layer.Layer<never, never, ToolRegistry | R> =>
    Layer.scopedDiscard(Effect.flatMap(ToolRegistry, (registry) => registry.register(tool)))
}

/** A tool's `execute` with its result as the tool message's content. */
const contentOf = <A, I, R, S, SI>(tool: Tool.Tool<A, I, R, S, SI>): (args: A) => Effect.Effect<string, Tool.ToolError, R> => {
  if (tool.success === undefined) return tool.execute
  const encode = Schema.encode(Schema.parseJson(tool.success))
  const { execute, name } = tool
  // A result its own Schema rejects is the tool's failure, reported to the model like any other.
  return (args) =>
    Effect.flatMap(execute(args), (value) =>
      encode(value).pipe(
        Effect.mapError((error) =>
          new Tool.ToolError({ message: `${name} returned a result that does not match its schema: ${describeParseError(error)}` })
        )
      ))
}
