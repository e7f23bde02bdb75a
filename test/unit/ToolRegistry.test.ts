/** Tests for the ToolRegistry: definitions, execution, structured results, errors, timeouts, interruption and Layer-based registration. */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Context, Deferred, Effect, Exit, Fiber, Layer, Option, Schema, Scope, TestClock } from "effect"
import { AppConfig } from "../../src/config/AppConfig.js"
import { MAX_JSON_DEPTH } from "../../src/protocol/JsonDepth.js"
import type { ToolCall, ToolResult } from "../../src/protocol/Tools.js"
import * as Tool from "../../src/tools/Tool.js"
import * as BuiltinTools from "../../src/tools/builtin/BuiltinTools.js"
import { ToolRegistry } from "../../src/tools/ToolRegistry.js"

const Registry = ToolRegistry.layer({ toolTimeout: "1 second" })
const WithBuiltins = BuiltinTools.layer.pipe(Layer.provideMerge(Registry))

const call = (name: string, args: unknown, id = "call_1"): ToolCall => ({
  id,
  type: "function",
  function: { name, arguments: typeof args === "string" ? args : JSON.stringify(args) }
})

const execute = (name: string, args: unknown): Effect.Effect<ToolResult, never, ToolRegistry> =>
  Effect.flatMap(ToolRegistry, (registry) => registry.execute(call(name, args)))

const expectError = (result: ToolResult, ...fragments: ReadonlyArray<string>) => {
  expect(result.is_error).toBe(true)
  for (const fragment of fragments) expect(result.content).toContain(fragment)
}

/** A service an outside tool needs, to check that a tool's requirements travel with its Layer. */
class Greeting extends Context.Tag("test/Greeting")<Greeting, { readonly prefix: string }>() {}

const greet = Tool.make({
  name: "greet",
  description: "Greets someone",
  parameters: Schema.Struct({ name: Schema.String }),
  execute: ({ name }) => Effect.map(Greeting, ({ prefix }) => `${prefix}, ${name}!`)
})

const GreetLayer = Tool.toLayer(greet).pipe(Layer.provide(Layer.succeed(Greeting, { prefix: "Hello" })))

describe("ToolRegistry", () => {
  it.effect("lists the built-in tools with JSON Schemas derived from their parameters", () =>
    Effect.gen(function*() {
      const registry = yield* ToolRegistry
      const definitions = yield* registry.definitions
      expect(definitions.map((d) => d.name).sort()).toEqual(["calculator", "get_current_time", "get_weather"])

      const weather = definitions.find((d) => d.name === "get_weather")
      expect(weather?.description).toContain("SAMPLE")
      expect(weather?.parameters).toMatchObject({
        type: "object",
        required: ["location"],
        properties: {
          location: { type: "string", minLength: 1 },
          unit: { type: "string", enum: ["celsius", "fahrenheit"] }
        }
      })
      expect(weather?.parameters).not.toHaveProperty("$schema")

      const time = yield* registry.lookup("get_current_time")
      expect(Option.map(time, (d) => d.parameters)).toEqual(Option.some({
        type: "object",
        required: [],
        properties: {
          timezone: expect.objectContaining({ type: "string", description: expect.stringContaining("IANA") })
        },
        additionalProperties: false
      }))

      const calculator = yield* registry.lookup("calculator")
      expect(Option.getOrThrow(calculator).parameters).toMatchObject({
        required: ["expression"],
        properties: { expression: { type: "string", maxLength: 1000 } }
      })
      expect(Option.isNone(yield* registry.lookup("nope"))).toBe(true)
    }).pipe(Effect.provide(WithBuiltins)))

  it.effect("runs the built-in tools from JSON arguments", () =>
    Effect.gen(function*() {
      const registry = yield* ToolRegistry
      const result = yield* registry.execute(call("calculator", { expression: "2 + 3 * 4" }, "call_42"))
      expect(result).toEqual({ tool_call_id: "call_42", content: "2 + 3 * 4 = 14", is_error: false })

      const weather = yield* execute("get_weather", { location: "Oslo", unit: "fahrenheit" })
      expect(weather.is_error).toBe(false)
      expect(weather.content).toMatch(/^Sample data .*Weather in Oslo: -?\d+°F/)

      yield* TestClock.setTime(Date.UTC(2030, 0, 1, 12, 0, 0))
      // The model may omit optional arguments entirely.
      const time = yield* execute("get_current_time", {})
      expect(time.is_error).toBe(false)
      expect(JSON.parse(time.content)).toMatchObject({ timezone: "UTC", iso: "2030-01-01T12:00:00.000Z" })
    }).pipe(Effect.provide(WithBuiltins)))

  /** A structured tool: its result is encoded with its success Schema (a Date becomes an ISO string). */
  const inventory = Tool.make({
    name: "inventory",
    description: "Counts the items on a shelf",
    parameters: Schema.Struct({ shelf: Schema.String }),
    success: Schema.Struct({ shelf: Schema.String, count: Schema.Int, checkedAt: Schema.Date }),
    execute: ({ shelf }) =>
      Effect.succeed({ shelf, count: shelf === "broken" ? 1.5 : 3, checkedAt: new Date(Date.UTC(2030, 0, 1)) })
  })

  it.effect("encodes a structured result with the tool's success Schema to JSON content", () =>
    Effect.gen(function*() {
      const result = yield* execute("inventory", { shelf: "A1" })
      expect(result).toEqual({
        tool_call_id: "call_1",
        content: "{\"shelf\":\"A1\",\"count\":3,\"checkedAt\":\"2030-01-01T00:00:00.000Z\"}",
        is_error: false
      })
      // The model sees the parameters only: the success Schema is not part of the definition.
      const definition = Option.getOrThrow(yield* Effect.flatMap(ToolRegistry, (registry) => registry.lookup("inventory")))
      expect(definition.parameters).toMatchObject({ required: ["shelf"] })
      expect(JSON.stringify(definition)).not.toContain("checkedAt")
    }).pipe(Effect.provide(ToolRegistry.layerTool(inventory).pipe(Layer.provideMerge(Registry)))))

  it.effect("a result its success Schema cannot encode is a tool error, not a defect", () =>
    Effect.gen(function*() {
      const result = yield* execute("inventory", { shelf: "broken" })
      expectError(result, "inventory returned a result that does not match its schema", "count")
      expect(result.tool_call_id).toBe("call_1")
    }).pipe(Effect.provide(ToolRegistry.layerTool(inventory).pipe(Layer.provideMerge(Registry)))))

  it("types execute by the success Schema, and as a string without one", () => {
    Tool.make({
      name: "typed",
      description: "",
      parameters: Schema.Struct({}),
      success: Schema.Struct({ n: Schema.Number }),
      // @ts-expect-error: the result must match the success Schema's type
      execute: () => Effect.succeed({ n: "one" })
    })
    // @ts-expect-error: without a success Schema, the result is the content string
    Tool.make({
      name: "plain",
      description: "",
      parameters: Schema.Struct({}),
      execute: () => Effect.succeed({ n: 1 })
    })
  })

  it.effect("reports an unknown tool with the available ones", () =>
    Effect.gen(function*() {
      const result = yield* execute("teleport", {})
      expectError(result, "Unknown tool \"teleport\"", "calculator", "get_weather", "get_current_time")
      expect(result.tool_call_id).toBe("call_1")
    }).pipe(Effect.provide(WithBuiltins)))

  it.effect("reports arguments that are not JSON", () =>
    Effect.gen(function*() {
      expectError(yield* execute("calculator", "{expression: 1+1"), "Invalid arguments for calculator")
    }).pipe(Effect.provide(WithBuiltins)))

  it.effect("reports arguments that fail the parameter Schema, naming the field", () =>
    Effect.gen(function*() {
      expectError(yield* execute("calculator", { expression: 42 }), "Invalid arguments for calculator", "expression")
      expectError(yield* execute("get_weather", {}), "Invalid arguments for get_weather", "location")
      expectError(
        yield* execute("get_weather", { location: "Paris", unit: "kelvin" }),
        "Invalid arguments for get_weather",
        "unit"
      )
      expectError(
        yield* execute("calculator", { expression: "1".repeat(1001) }),
        "Invalid arguments for calculator",
        "expression"
      )
    }).pipe(Effect.provide(WithBuiltins)))

  it.effect("reports a tool's own failure", () =>
    Effect.gen(function*() {
      const result = yield* execute("calculator", { expression: "1/0" })
      expect(result).toEqual({ tool_call_id: "call_1", content: "Division by zero at position 1", is_error: true })
      expectError(yield* execute("get_current_time", { timezone: "Nowhere/Special" }), "Nowhere/Special")
    }).pipe(Effect.provide(WithBuiltins)))

  it.scoped("times out a tool that does not finish and interrupts it", () =>
    Effect.gen(function*() {
      const interrupted = yield* Deferred.make<void>()
      const slow = Tool.make({
        name: "slow",
        description: "Never finishes",
        parameters: Schema.Struct({}),
        execute: () => Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined)))
      })
      yield* Layer.build(Tool.toLayer(slow))

      const fiber = yield* Effect.fork(execute("slow", {}))
      yield* TestClock.adjust("999 millis")
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* TestClock.adjust("1 millis")
      const result = yield* Fiber.join(fiber)
      expectError(result, "slow did not finish within 1s")
      expect(yield* Deferred.isDone(interrupted)).toBe(true)
    }).pipe(Effect.provide(Registry)))

  it.scoped("interrupting a running execute interrupts the tool", () =>
    Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const interrupted = yield* Deferred.make<void>()
      const waiting = Tool.make({
        name: "waiting",
        description: "Waits until interrupted",
        parameters: Schema.Struct({}),
        execute: () =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Effect.never),
            Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
          )
      })
      yield* Layer.build(Tool.toLayer(waiting))

      const fiber = yield* Effect.fork(execute("waiting", {}))
      yield* Deferred.await(started)
      const exit = yield* Fiber.interrupt(fiber)
      expect(Exit.isInterrupted(exit)).toBe(true)
      expect(yield* Deferred.isDone(interrupted)).toBe(true)
    }).pipe(Effect.provide(Registry)))

  it.effect("includes a tool added by an outside Layer, with the services it needs", () =>
    Effect.gen(function*() {
      const registry = yield* ToolRegistry
      const names = (yield* registry.definitions).map((d) => d.name).sort()
      expect(names).toEqual(["calculator", "get_current_time", "get_weather", "greet"])
      expect(Option.getOrThrow(yield* registry.lookup("greet")).parameters).toMatchObject({ required: ["name"] })
      const result = yield* execute("greet", { name: "Ada" })
      expect(result).toEqual({ tool_call_id: "call_1", content: "Hello, Ada!", is_error: false })
    }).pipe(Effect.provide(Layer.mergeAll(BuiltinTools.layer, GreetLayer).pipe(Layer.provideMerge(Registry)))))

  it.effect("removes a tool when its Layer's scope closes", () =>
    Effect.gen(function*() {
      const registry = yield* ToolRegistry
      yield* Effect.scoped(
        Effect.gen(function*() {
          yield* Layer.build(GreetLayer)
          expect(Option.isSome(yield* registry.lookup("greet"))).toBe(true)
        })
      )
      expect(Option.isNone(yield* registry.lookup("greet"))).toBe(true)
      expectError(yield* execute("greet", { name: "Ada" }), "Unknown tool \"greet\"")
    }).pipe(Effect.provide(Registry)))

  it.effect("dies when two tools share a name", () =>
    Effect.gen(function*() {
      const impostor = Tool.make({
        name: "calculator",
        description: "Another calculator",
        parameters: Schema.Struct({}),
        execute: () => Effect.succeed("42")
      })
      const exit = yield* Effect.exit(
        Effect.provide(Effect.void, Layer.mergeAll(BuiltinTools.layer, Tool.toLayer(impostor)).pipe(Layer.provide(Registry)))
      )
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit)) {
        expect(Cause.isDie(exit.cause)).toBe(true)
        expect(Cause.pretty(exit.cause)).toContain("A tool named \"calculator\" is already registered")
      }
    }))

  /** A tool named "dup" that answers with its number, to tell registrations apart. */
  const dup = (n: number) =>
    Tool.make({
      name: "dup",
      description: `dup #${n}`,
      parameters: Schema.Struct({}),
      execute: () => Effect.succeed(`#${n}`)
    })

  /**
   * Registers dup #0 and dup #1 concurrently in a fresh registry, each in its
   * own scope, with the fibers yielding to each other every `ops` operations
   * (the scheduler does this by itself every 2048 operations, so a busy server
   * interleaves registrations the same way). Below about 10, Effect 3.22's
   * `Effect.all` itself stops making progress, hence the range used below.
   */
  const raceRegistrations = (ops: number) =>
    Effect.gen(function*() {
      const registry = yield* ToolRegistry.make()
      const scopes = [yield* Scope.make(), yield* Scope.make()] as const
      const exits = yield* Effect.all(
        [0, 1].map((n) => registry.register(dup(n)).pipe(Scope.extend(scopes[n]!), Effect.exit)),
        { concurrency: "unbounded" }
      ).pipe(Effect.withMaxOpsBeforeYield(ops))
      return { registry, scopes, exits }
    }).pipe(Effect.provide(AppConfig.layerFromEnv({})))

  /** Interleavings to try; the check-then-set across a `yield*` raced at 12. */
  const OPS = Array.from({ length: 29 }, (_, i) => 12 + i)

  it.effect("registers a name once when two registrations race", () =>
    Effect.gen(function*() {
      for (const ops of OPS) {
        const { exits, registry } = yield* raceRegistrations(ops)
        expect(exits.filter(Exit.isSuccess), `yielding every ${ops} operations`).toHaveLength(1)
        const failure = exits.find(Exit.isFailure)
        expect(failure !== undefined && Cause.pretty(failure.cause)).toContain("A tool named \"dup\" is already registered")
        const winner = exits.findIndex(Exit.isSuccess)
        expect(yield* registry.execute(call("dup", {}))).toMatchObject({ content: `#${winner}`, is_error: false })
        expect(Option.getOrThrow(yield* registry.lookup("dup")).description).toBe(`dup #${winner}`)
      }
    }))

  it.effect("a registration's finalizer removes that registration only", () =>
    Effect.gen(function*() {
      for (const ops of OPS) {
        const { exits, registry, scopes } = yield* raceRegistrations(ops)
        // Close the scopes one by one: the tool stays while a successful registration's scope is open.
        for (const n of [0, 1]) {
          yield* Scope.close(scopes[n]!, Exit.void)
          const stillOpen = [0, 1].filter((m) => m > n && Exit.isSuccess(exits[m]!))
          expect(Option.isSome(yield* registry.lookup("dup")), `yielding every ${ops}, after closing scope #${n}`)
            .toBe(stillOpen.length > 0)
        }
        expect(Option.isNone(yield* registry.lookup("dup"))).toBe(true)
        // The name is free again.
        yield* Effect.scoped(Effect.gen(function*() {
          yield* registry.register(dup(2))
          expect(yield* registry.execute(call("dup", {}))).toMatchObject({ content: "#2", is_error: false })
        }))
      }
    }))

  it.effect("a later registration of a name survives the earlier one's scope closing", () =>
    Effect.gen(function*() {
      const registry = yield* ToolRegistry
      const first = yield* Scope.make()
      yield* registry.register(dup(0)).pipe(Scope.extend(first))
      yield* Scope.close(first, Exit.void)
      const second = yield* Scope.make()
      yield* registry.register(dup(1)).pipe(Scope.extend(second))
      expect(yield* registry.execute(call("dup", {}))).toMatchObject({ content: "#1", is_error: false })
      yield* Scope.close(second, Exit.void)
      expect(Option.isNone(yield* registry.lookup("dup"))).toBe(true)
    }).pipe(Effect.provide(Registry)))

  it.effect("reports deeply nested arguments as invalid instead of crashing the tool", () =>
    Effect.gen(function*() {
      for (const depth of [3_000, 100_000]) {
        // Nested inside a field the Schema checks: the failure's description must stay short.
        const inField = yield* execute("calculator", `{"expression":${"[".repeat(depth)}${"]".repeat(depth)}}`)
        expectError(inField, "Invalid arguments for calculator", `nested more than ${MAX_JSON_DEPTH} levels deep`)
        // The whole arguments value.
        const whole = yield* execute("get_weather", "[".repeat(depth) + "]".repeat(depth))
        expectError(whole, "Invalid arguments for get_weather", `nested more than ${MAX_JSON_DEPTH} levels deep`)
      }
      // Below the limit, the Schema's own message, with a short preview of the value.
      const shallow = yield* execute("calculator", `{"expression":${"[".repeat(40)}${"]".repeat(40)}}`)
      expectError(shallow, "Invalid arguments for calculator: expression: Expected string, actual [[[[…]]]]")
      expect(shallow.content.length).toBeLessThan(200)
    }).pipe(Effect.provide(WithBuiltins)))
})
