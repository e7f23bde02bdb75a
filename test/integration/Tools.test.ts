/**
 * Tool calling over /ws: the tool requests (tools_list, tool_execute), tools
 * in chat requests in every accepted shape, tool calls in whole and streamed
 * responses, and client-driven continuations. The server loop lives in
 * ToolLoop.test.ts.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import type { ChatCompletionRequest } from "../../src/protocol/Chat.js"
import type { ToolCall, ToolDefinition } from "../../src/protocol/Tools.js"
import { ToolRegistry } from "../../src/tools/ToolRegistry.js"
import { Behaviour, completion, type ToolCallSpec, toolCallChunks, usageOf } from "../support/FakeOpenAI.js"
import { FakeOpenAIService } from "../support/FakeOpenAI.js"
import * as TestServer from "../support/TestServer.js"
import * as WsClient from "../support/WsClient.js"

const connect = Effect.flatMap(TestServer.urls, ({ ws }) => WsClient.connect(ws))

type ChatPayload = typeof ChatCompletionRequest.Encoded


/** Sends a raw text frame (exactly as a client would write it) and returns the request's frames. */
const sendRaw = (client: WsClient.WsClient, text: string) =>
  Effect.suspend(() => {
    const requestId: unknown = JSON.parse(text).request_id
    if (typeof requestId !== "string") return Effect.dieMessage("the frame has no request_id")
    client.send(text)
    return client.collect(requestId)
  })

const toolCall = (name: string, args: string, id = "call_1"): ToolCall => ({
  id,
  type: "function",
  function: { name, arguments: args }
})

const executeTool = (client: WsClient.WsClient, requestId: string, call: ToolCall) =>
  client.request({ type: "tool_execute", request_id: requestId, payload: { tool_call: call } }).pipe(
    Effect.map((frames) => WsClient.only(frames, "tool_execute_response").data)
  )

/** The seed's flat get_weather definition, as in its README's chat example. */
const seedWeatherTool: ToolDefinition = {
  name: "get_weather",
  description: "Get weather information for a location",
  parameters: {
    type: "object",
    properties: {
      location: { type: "string", description: "City name" },
      unit: { type: "string", enum: ["celsius", "fahrenheit"] }
    },
    required: ["location"]
  }
}

/** The seed README's chat example with tools, byte for byte. */
const seedChatExample = `{
  "type": "chat_completion",
  "request_id": "req-123",
  "payload": {
    "messages": [
      {"role": "user", "content": "What's the weather in San Francisco?"}
    ],
    "tools": [
      {
        "name": "get_weather",
        "description": "Get weather information for a location",
        "parameters": {
          "type": "object",
          "properties": {
            "location": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
          },
          "required": ["location"]
        }
      }
    ],
    "tool_choice": "auto"
  }
}`

/** The seed README's tool_execute example, byte for byte. */
const seedToolExecuteExample = `{
  "type": "tool_execute",
  "request_id": "req-128",
  "payload": {
    "tool_call": {
      "id": "call_123",
      "type": "function",
      "function": {
        "name": "get_weather",
        "arguments": "{\\"location\\": \\"San Francisco, CA\\"}"
      }
    }
  }
}`

const BUILTIN_NAMES = ["calculator", "get_current_time", "get_weather"]

describe("tools over /ws", () => {
  layer(TestServer.layer(), { excludeTestServices: true })("offline model", (it) => {
    it.scoped("tools_list answers the seed's ToolDefinition shape with JSON Schema parameters", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const frames = yield* sendRaw(client, `{"type": "tools_list", "request_id": "req-127", "payload": {}}`)
        const { data } = WsClient.only(frames, "tools_list_response")
        expect(frames).toHaveLength(1)
        expect(data.tools.map((tool) => tool.name).sort()).toEqual(BUILTIN_NAMES)
        for (const tool of data.tools) {
          expect(Object.keys(tool).sort()).toEqual(["description", "name", "parameters"])
          expect(tool.name).toMatch(/^[a-zA-Z0-9_-]{1,64}$/)
          expect(tool.description?.length).toBeGreaterThan(10)
          expect(tool.parameters).toMatchObject({ type: "object", properties: expect.any(Object) })
          expect(tool.parameters).not.toHaveProperty("$schema")
        }
        const weather = data.tools.find((tool) => tool.name === "get_weather")
        expect(weather?.parameters).toMatchObject({
          type: "object",
          required: ["location"],
          properties: {
            location: { type: "string", description: expect.stringContaining("San Francisco") },
            unit: { type: "string", enum: ["celsius", "fahrenheit"] }
          }
        })
        const calculator = data.tools.find((tool) => tool.name === "calculator")
        expect(calculator?.parameters).toMatchObject({
          required: ["expression"],
          properties: { expression: { type: "string" } }
        })
        // The same definitions the registry holds.
        const registry = yield* ToolRegistry
        expect([...data.tools].sort((a, b) => a.name.localeCompare(b.name))).toEqual(
          [...(yield* registry.definitions)].sort((a, b) => a.name.localeCompare(b.name))
        )
      }))

    it.scoped("tool_execute with the seed README's example answers a ToolResult about San Francisco", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const frames = yield* sendRaw(client, seedToolExecuteExample)
        expect(frames).toHaveLength(1)
        const frame = WsClient.only(frames, "tool_execute_response")
        expect(frame.request_id).toBe("req-128")
        expect(Object.keys(frame.data).sort()).toEqual(["content", "is_error", "tool_call_id"])
        expect(frame.data.tool_call_id).toBe("call_123")
        expect(frame.data.is_error).toBe(false)
        expect(frame.data.content).toContain("San Francisco, CA")
        expect(frame.data.content).toMatch(/-?\d+°C/)

        const fahrenheit = yield* executeTool(
          client,
          "f1",
          toolCall("get_weather", JSON.stringify({ location: "San Francisco, CA", unit: "fahrenheit" }), "call_f")
        )
        expect(fahrenheit).toMatchObject({ tool_call_id: "call_f", is_error: false })
        expect(fahrenheit.content).toMatch(/-?\d+°F/)
      }))

    it.scoped("tool_execute runs the calculator and get_current_time", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const sum = yield* executeTool(client, "calc", toolCall("calculator", `{"expression":"(2+3)*4"}`, "call_c"))
        expect(sum).toEqual({ tool_call_id: "call_c", content: "(2+3)*4 = 20", is_error: false })

        const precedence = yield* executeTool(client, "calc2", toolCall("calculator", `{"expression":"2 + 3 * 4 - 2^3"}`))
        expect(precedence.is_error).toBe(false)
        expect(precedence.content).toBe("2 + 3 * 4 - 2^3 = 6")

        // Some providers send "" for a call without arguments: the defaults apply.
        const time = yield* executeTool(client, "time", toolCall("get_current_time", ""))
        expect(time.is_error).toBe(false)
        expect(JSON.parse(time.content)).toMatchObject({ timezone: "UTC", utc_offset: "+00:00" })
      }))

    it.scoped("tool_execute failures are ToolResults with is_error true and a helpful message", () =>
      Effect.gen(function*() {
        const client = yield* connect

        const unknown = yield* executeTool(client, "u", toolCall("get_stock_price", `{"symbol":"ACME"}`, "call_u"))
        expect(unknown.tool_call_id).toBe("call_u")
        expect(unknown.is_error).toBe(true)
        expect(unknown.content).toContain("get_stock_price")
        for (const name of BUILTIN_NAMES) expect(unknown.content).toContain(name)

        const notJson = yield* executeTool(client, "nj", toolCall("get_weather", "{location: Paris", "call_nj"))
        expect(notJson.tool_call_id).toBe("call_nj")
        expect(notJson.is_error).toBe(true)
        expect(notJson.content).toContain("Invalid arguments for get_weather")

        const missing = yield* executeTool(client, "m", toolCall("get_weather", `{"city":"Paris"}`))
        expect(missing.is_error).toBe(true)
        expect(missing.content).toContain("Invalid arguments for get_weather")
        expect(missing.content).toContain("location")

        const wrongType = yield* executeTool(client, "w", toolCall("get_weather", `{"location":42}`))
        expect(wrongType.is_error).toBe(true)
        expect(wrongType.content).toMatch(/location.*string/i)

        const badEnum = yield* executeTool(client, "e", toolCall("get_weather", `{"location":"Paris","unit":"kelvin"}`))
        expect(badEnum.is_error).toBe(true)
        expect(badEnum.content).toContain("unit")
        expect(badEnum.content).toContain("kelvin")

        const divide = yield* executeTool(client, "d", toolCall("calculator", `{"expression":"1/0"}`, "call_d"))
        expect(divide).toMatchObject({ tool_call_id: "call_d", is_error: true })
        expect(divide.content).toMatch(/division by zero/i)

        const zone = yield* executeTool(client, "z", toolCall("get_current_time", `{"timezone":"Mars/Olympus_Mons"}`))
        expect(zone.is_error).toBe(true)
        expect(zone.content).toContain("Mars/Olympus_Mons")

        // A failed call does not break the connection.
        const [pong] = yield* client.request({ type: "ping", request_id: "alive" })
        expect(pong?.type).toBe("pong")
      }))

    it.scoped("a tool_execute envelope without a valid tool_call gets a validation error frame", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const noCall = WsClient.only(
          yield* sendRaw(client, JSON.stringify({ type: "tool_execute", request_id: "bad1", payload: {} })),
          "error"
        )
        expect(noCall.request_id).toBe("bad1")
        expect(noCall.data).toEqual({ category: "validation", code: "invalid_payload", retryable: false })
        expect(noCall.error).toContain("payload.tool_call")

        const noPayload = WsClient.only(
          yield* sendRaw(client, JSON.stringify({ type: "tool_execute", request_id: "bad2" })),
          "error"
        )
        expect(noPayload.data.code).toBe("invalid_payload")

        const noName = WsClient.only(
          yield* sendRaw(
            client,
            JSON.stringify({
              type: "tool_execute",
              request_id: "bad3",
              payload: { tool_call: { id: "c", type: "function", function: { arguments: "{}" } } }
            })
          ),
          "error"
        )
        expect(noName.data.code).toBe("invalid_payload")
        expect(noName.error).toContain("payload.tool_call.function.name")
      }))

    it.scoped("the seed's chat example with tools works as written on the offline model", () =>
      Effect.gen(function*() {
        const client = yield* connect
        const frames = yield* sendRaw(client, seedChatExample)
        const response = WsClient.only(frames, "chat_completion_response")
        expect(response.request_id).toBe("req-123")
        const choice = response.data.choices[0]
        expect(choice?.finish_reason).toBe("tool_calls")
        expect(choice?.message.content).toBeNull()
        const calls = choice?.message.tool_calls ?? []
        expect(calls).toHaveLength(1)
        expect(calls[0]).toMatchObject({ type: "function", function: { name: "get_weather" } })
        expect(JSON.parse(calls[0]?.function.arguments ?? "{}")).toEqual({ location: "San Francisco" })
        expect(response.data.tool_rounds).toBeUndefined()
      }))
  })

  layer(TestServer.layerWithFakeUpstream(), { excludeTestServices: true })("fake upstream", (it) => {
    /** Sends a chat request and returns its frames (the fake starts each test empty). */
    const chat = (requestId: string, payload: ChatPayload) =>
      Effect.gen(function*() {
        const client = yield* connect
        return yield* client.request({ type: "chat_completion", request_id: requestId, payload })
      })

    const freshFake = Effect.tap(FakeOpenAIService, (fake) => fake.reset())

    it.scoped("the seed's flat shape and OpenAI's shape reach the upstream in OpenAI's shape", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const registry = yield* ToolRegistry
        const calculator = yield* registry.lookup("calculator")
        const openAiShaped = {
          type: "function" as const,
          function: {
            name: "lookup_order",
            description: "Looks an order up",
            parameters: { type: "object", properties: { order_id: { type: "string" } }, required: ["order_id"] },
            strict: true
          }
        }
        const frames = yield* chat("shapes", {
          messages: [{ role: "user", content: "hi" }],
          tools: [seedWeatherTool, openAiShaped, "calculator", { name: "no_params" }]
        })
        WsClient.only(frames, "chat_completion_response")
        expect(fake.requestCount).toBe(1)
        expect(fake.lastRequest?.fields["tools"]).toEqual([
          { type: "function", function: seedWeatherTool },
          openAiShaped,
          { type: "function", function: calculator._tag === "Some" ? calculator.value : "missing" },
          { type: "function", function: { name: "no_params" } }
        ])
      }))

    it.scoped("\"tools\": \"registry\" sends every registered tool; a list of names sends those", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const definitions = yield* Effect.flatMap(ToolRegistry, (registry) => registry.definitions)
        expect(definitions.map((d) => d.name).sort()).toEqual(BUILTIN_NAMES)
        const byName = (name: string) => ({ type: "function", function: definitions.find((d) => d.name === name) })

        yield* chat("all", { messages: [{ role: "user", content: "hi" }], tools: "registry" })
        const all = fake.lastRequest?.fields["tools"]
        expect(Array.isArray(all) ? all.length : all).toBe(3)
        expect(all).toEqual(expect.arrayContaining(BUILTIN_NAMES.map(byName)))
        expect(JSON.stringify(all)).toContain("\"enum\":[\"celsius\",\"fahrenheit\"]")

        yield* chat("some", { messages: [{ role: "user", content: "hi" }], tools: ["get_weather", "calculator"] })
        expect(fake.lastRequest?.fields["tools"]).toEqual([byName("get_weather"), byName("calculator")])

        // An empty selection sends no tools at all (OpenAI rejects "tools": []).
        yield* chat("none", { messages: [{ role: "user", content: "hi" }], tools: [] })
        expect(fake.lastRequest?.fields).not.toHaveProperty("tools")
        yield* chat("absent", { messages: [{ role: "user", content: "hi" }] })
        expect(fake.lastRequest?.fields).not.toHaveProperty("tools")
        expect(fake.requestCount).toBe(4)
      }))

    it.scoped("an unknown tool name is a validation error (unknown_tool) and nothing goes upstream", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const frames = yield* chat("unknown", {
          messages: [{ role: "user", content: "hi" }],
          tools: ["get_weather", "get_stock_price"]
        })
        const error = WsClient.only(frames, "error")
        expect(error.data).toEqual({ category: "validation", code: "unknown_tool", retryable: false })
        expect(error.error).toContain("get_stock_price")
        for (const name of BUILTIN_NAMES) expect(error.error).toContain(name)

        const stream = yield* Effect.flatMap(connect, (client) =>
          client.request({
            type: "chat_completion_stream",
            request_id: "unknown-stream",
            payload: { messages: [{ role: "user", content: "hi" }], tools: ["nope"] }
          }))
        expect(WsClient.only(stream, "error").data.code).toBe("unknown_tool")
        expect(stream.filter(WsClient.frameOf("chat_completion_stream_end"))).toHaveLength(0)
        expect(fake.requestCount).toBe(0)
      }))

    it.scoped("tool_choice and parallel_tool_calls pass through to the upstream", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        yield* chat("required", {
          messages: [{ role: "user", content: "hi" }],
          tools: "registry",
          tool_choice: "required",
          parallel_tool_calls: false
        })
        expect(fake.lastRequest?.fields["tool_choice"]).toBe("required")
        expect(fake.lastRequest?.fields["parallel_tool_calls"]).toBe(false)

        const named = { type: "function" as const, function: { name: "get_weather" } }
        yield* chat("named", {
          messages: [{ role: "user", content: "hi" }],
          tools: ["get_weather"],
          tool_choice: named,
          parallel_tool_calls: true
        })
        expect(fake.lastRequest?.fields["tool_choice"]).toEqual(named)
        expect(fake.lastRequest?.fields["parallel_tool_calls"]).toBe(true)

        yield* chat("defaults", { messages: [{ role: "user", content: "hi" }], tools: ["get_weather"] })
        expect(fake.lastRequest?.fields).not.toHaveProperty("tool_choice")
        expect(fake.lastRequest?.fields).not.toHaveProperty("parallel_tool_calls")
      }))

    it.scoped("the seed's chat example with tools works as written and answers the seed's response shape", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const seedCall = { id: "call_123", name: "get_weather", arguments: "{\"location\": \"San Francisco, CA\"}" }
        fake.enqueue(Behaviour.json(completion({ toolCalls: [seedCall] })))
        const client = yield* connect
        const frames = yield* sendRaw(client, seedChatExample)
        const response = WsClient.only(frames, "chat_completion_response")
        expect(response.request_id).toBe("req-123")
        expect(response.data.choices[0]?.message.content).toBeNull()
        expect(response.data.choices[0]?.message.tool_calls).toEqual([
          { id: "call_123", type: "function", function: { name: "get_weather", arguments: "{\"location\": \"San Francisco, CA\"}" } }
        ])

        const sent = fake.lastRequest?.fields
        expect(sent?.["messages"]).toEqual([{ role: "user", content: "What's the weather in San Francisco?" }])
        expect(sent?.["tools"]).toEqual([{ type: "function", function: seedWeatherTool }])
        expect(sent?.["tool_choice"]).toBe("auto")
        expect(fake.requestCount).toBe(1)
      }))

    it.scoped("a whole completion carries the tool calls exactly as the upstream returned them", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const specs: ReadonlyArray<ToolCallSpec> = [
          { id: "call_a", name: "get_weather", arguments: { location: "Paris, France", unit: "celsius" } },
          { id: "call_b", name: "lookup_order", arguments: "{\"order_id\": \"A-1\", \"note\": \"naïve ☃ \\\"quoted\\\"\"}" }
        ]
        const upstream = completion({ toolCalls: specs })
        fake.enqueue(Behaviour.json(upstream))
        const frames = yield* chat("calls", { messages: [{ role: "user", content: "hi" }], tools: "registry" })
        const response = WsClient.only(frames, "chat_completion_response")
        const choice = response.data.choices[0]
        expect(choice?.finish_reason).toBe("tool_calls")
        expect(choice?.message.content).toBeNull()
        expect(choice?.message.tool_calls).toEqual(upstream.choices[0]?.message.tool_calls)
        expect(response.data.id).toBe(upstream.id)
        expect(response.data.tool_rounds).toBeUndefined()
        // Without auto_execute_tools nothing is executed and nothing more is asked.
        expect(fake.requestCount).toBe(1)
      }))

    it.scoped("streamed parallel tool calls pass through as chunks and are assembled in the end frame", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const specs: ReadonlyArray<ToolCallSpec> = [
          { id: "call_w", name: "get_weather", arguments: { location: "San Francisco, CA", unit: "fahrenheit" } },
          { id: "call_c", name: "calculator", arguments: { expression: "(12.5 + 7.5) * 3 / 4" } },
          { id: "call_t", name: "get_current_time", arguments: { timezone: "Asia/Tokyo" } }
        ]
        const usage = usageOf(42, 17)
        const scripted = toolCallChunks(specs, { splitInto: 6, includeUsage: true, usage })
        fake.enqueue(Behaviour.stream(scripted))
        const client = yield* connect
        const frames = yield* client.request({
          type: "chat_completion_stream",
          request_id: "parallel",
          payload: { messages: [{ role: "user", content: "three things" }], tools: "registry" }
        })

        const chunks = frames.filter(WsClient.frameOf("chat_completion_stream_chunk"))
        expect(chunks).toHaveLength(scripted.length)
        expect(frames.filter(WsClient.frameOf("tool_execution"))).toHaveLength(0)
        expect(frames.at(-1)?.type).toBe("chat_completion_stream_end")
        // Every delta reaches the client, in order (interleaved by index as scripted).
        const deltasOf = (list: ReadonlyArray<{ readonly choices: ReadonlyArray<{ readonly delta: { readonly tool_calls?: ReadonlyArray<unknown> | undefined } }> }>) =>
          list.flatMap((c) => c.choices.flatMap((choice) => choice.delta.tool_calls ?? []))
        const scriptedDeltas = deltasOf(scripted)
        expect(scriptedDeltas.length).toBeGreaterThan(15)
        expect(deltasOf(chunks.map((c) => c.data))).toEqual(scriptedDeltas)
        const indices = chunks.flatMap((c) => c.data.choices.flatMap((ch) => (ch.delta.tool_calls ?? []).map((d) => d.index)))
        expect(indices.slice(0, 6)).toEqual([0, 1, 2, 0, 1, 2])

        const end = WsClient.only(frames, "chat_completion_stream_end").data
        expect(end.finish_reason).toBe("tool_calls")
        expect(end.content).toBe("")
        expect(end.tool_calls).toEqual(specs.map((spec) => ({
          id: spec.id,
          type: "function",
          function: { name: spec.name, arguments: JSON.stringify(spec.arguments) }
        })))
        expect(end.usage).toEqual(usage)
        expect(end.tool_rounds).toBeUndefined()
        expect(fake.requestCount).toBe(1)
      }))

    it.scoped("a continuation with assistant tool_calls and tool messages is forwarded unchanged", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const messages: ChatPayload["messages"] = [
          { role: "system", content: "You are terse." },
          { role: "user", content: "Weather in Paris and 2+3?" },
          {
            role: "assistant",
            content: null,
            tool_calls: [
              { id: "call_p1", type: "function", function: { name: "get_weather", arguments: "{\"location\":\"Paris\"}" } },
              { id: "call_p2", type: "function", function: { name: "calculator", arguments: "{\"expression\":\"2+3\"}" } }
            ]
          },
          { role: "tool", tool_call_id: "call_p1", content: "Weather in Paris: 18°C, sunny" },
          { role: "tool", tool_call_id: "call_p2", content: [{ type: "text", text: "2+3 = 5" }] }
        ]
        fake.enqueue(Behaviour.json(completion({ content: "18°C and sunny; 5." })))
        const frames = yield* chat("continue", { messages, tools: "registry" })
        const response = WsClient.only(frames, "chat_completion_response")
        expect(response.data.choices[0]?.message.content).toBe("18°C and sunny; 5.")
        expect(fake.requestCount).toBe(1)
        expect(fake.lastRequest?.fields["messages"]).toEqual(messages)

        // The same conversation, streamed.
        const client = yield* connect
        const streamed = yield* client.request({
          type: "chat_completion_stream",
          request_id: "continue-stream",
          payload: { messages, tools: "registry" }
        })
        expect(WsClient.only(streamed, "chat_completion_stream_end").data.finish_reason).toBe("stop")
        expect(fake.requestCount).toBe(2)
        expect(fake.lastRequest?.fields["messages"]).toEqual(messages)
      }))

    it.scoped("a tool message without tool_call_id is a validation error", () =>
      Effect.gen(function*() {
        const fake = yield* freshFake
        const frames = yield* chat("no-id", {
          messages: [{ role: "user", content: "hi" }, { role: "tool", content: "result" }]
        } as never)
        const error = WsClient.only(frames, "error")
        expect(error.data.code).toBe("invalid_payload")
        expect(error.error).toContain("tool_call_id")
        expect(fake.requestCount).toBe(0)
      }))
  })
})
