/**
 * Traces of the real process (`node src/main.ts`, the offline model) with
 * OTEL_EXPORTER_OTLP_ENDPOINT pointing at a fake collector on loopback: what
 * arrives over OTLP/HTTP JSON for a streamed chat with the tool loop, an
 * embedding, a failing request and a direct tool call on /ws, and a
 * completion on /rpc. Spans are checked by name, parent, kind, times and
 * GenAI attributes; none is made per chunk.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Stream } from "effect"
import * as FakeCollector from "../support/FakeCollector.js"
import type { CollectedSpan } from "../support/FakeCollector.js"
import { rpcClient } from "../support/RpcTestClient.js"
import * as ServerProcess from "../support/ServerProcess.js"
import * as WsClient from "../support/WsClient.js"

/** The real server process, stopped (SIGTERM, then SIGKILL) when the scope closes. */
const startServer = (env: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => ServerProcess.start({ env }),
      catch: (error) => error instanceof Error ? error : new Error(String(error))
    }),
    (server) => Effect.promise(() => ServerProcess.stop(server))
  )

const withRequestId = (requestId: string) => (span: CollectedSpan) => span.attributes["aibase.request_id"] === requestId

/** The request's span (the root of its trace) and the spans under it. */
const traceOf = (spans: ReadonlyArray<CollectedSpan>, requestId: string) => {
  const root = spans.find(withRequestId(requestId))
  if (root === undefined) return expect.fail(`no span for ${requestId}: ${spans.map((s) => s.name).join(", ")}`)
  return { root, children: spans.filter((s) => s.parentSpanId === root.spanId) }
}

describe("traces over OTLP/HTTP", () => {
  it.scopedLive("each model or tool request is a span with GenAI attributes, its model calls and tools are children", () =>
    Effect.gen(function*() {
      const collector = yield* FakeCollector.start
      const server = yield* startServer({
        OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
        OTEL_SERVICE_NAME: "aibase-test",
        // Export every 100 ms instead of every 5 s.
        OTEL_BSP_SCHEDULE_DELAY: "100",
        OFFLINE_WORD_DELAY_MS: "1"
      })
      const client = yield* WsClient.connect(`ws://127.0.0.1:${server.port}/ws`)

      const stream = yield* client.request({
        type: "chat_completion_stream",
        request_id: "stream-1",
        payload: {
          messages: [{ role: "user", content: "What is 17 * 23?" }],
          tools: ["calculator"],
          auto_execute_tools: true
        }
      })
      const chunks = stream.filter(WsClient.frameOf("chat_completion_stream_chunk")).length
      expect(chunks).toBeGreaterThan(3)
      const end = stream.at(-1)
      if (end?.type !== "chat_completion_stream_end") return expect.fail(`expected the end frame, got ${JSON.stringify(end)}`)

      // A resumable stream runs on a fiber of its own and finishes its record itself.
      yield* client.request({
        type: "chat_completion_stream",
        request_id: "resumable-1",
        payload: { messages: [{ role: "user", content: "hello" }], resumable: true }
      })
      yield* client.request({ type: "embedding", request_id: "embed-1", payload: { input: "hello traces" } })
      const failed = yield* client.request({
        type: "chat_completion",
        request_id: "fail-1",
        payload: { messages: [{ role: "user", content: "offline:fail:rate_limit" }] }
      })
      expect(failed.at(-1)?.type).toBe("error")
      yield* client.request({
        type: "tool_execute",
        request_id: "tool-1",
        payload: {
          tool_call: { id: "call_direct", type: "function", function: { name: "calculator", arguments: "{\"expression\":\"2+2\"}" } }
        }
      })
      // Requests that reach neither a model nor a tool make no span, nor do plain HTTP requests.
      yield* client.request({ type: "ping", request_id: "ping-1", payload: {} })
      const health = yield* Effect.promise(() => fetch(`http://127.0.0.1:${server.port}/health`))
      expect(health.status).toBe(200)

      const rpc = yield* rpcClient(`ws://127.0.0.1:${server.port}/rpc`)
      yield* rpc.ChatCompletion({ messages: [{ role: "user", content: "hello over rpc" }] })
      yield* rpc.ChatCompletionStream({ messages: [{ role: "user", content: "stream over rpc" }] }).pipe(Stream.runDrain)

      const isRpc = (span: CollectedSpan) => span.attributes["aibase.transport"] === "rpc"
      const spans = yield* collector.waitForSpans(
        (spans) =>
          ["stream-1", "resumable-1", "embed-1", "fail-1", "tool-1"].every((id) => spans.some(withRequestId(id))) &&
          spans.filter(isRpc).length >= 2 &&
          // The tool loop's children: two model calls and the tool.
          spans.filter((s) => s.parentSpanId !== undefined && s.parentSpanId === spans.find(withRequestId("stream-1"))?.spanId)
              .length >= 3,
        "the spans of every request"
      )

      // Sent as OTLP/HTTP JSON to <endpoint>/v1/traces, by the configured service.
      expect(collector.rejected()).toEqual([])
      expect(new Set(collector.exports().map((e) => `${e.path} ${e.contentType}`))).toEqual(new Set(["/v1/traces application/json"]))
      for (const span of spans) expect(span.resource["service.name"]).toBe("aibase-test")

      // The streamed chat with one tool round.
      const chat = traceOf(spans, "stream-1")
      const model = chat.root.attributes["gen_ai.request.model"]
      if (typeof model !== "string" || model === "") return expect.fail("the request span names no model")
      expect(chat.root.name).toBe(`chat ${model}`)
      expect(chat.root.parentSpanId).toBeUndefined()
      expect(chat.root.kind).toBe(FakeCollector.SpanKind.server)
      expect(chat.root.status).not.toBe(FakeCollector.StatusCode.error)
      expect(chat.root.attributes).toMatchObject({
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "offline",
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": end.data.usage?.prompt_tokens,
        "gen_ai.usage.output_tokens": end.data.usage?.completion_tokens,
        "gen_ai.response.finish_reasons": ["stop"],
        "aibase.request_id": "stream-1",
        "aibase.transport": "ws",
        "aibase.tool_rounds": 1
      })
      expect(chat.root.attributes["error.type"]).toBeUndefined()
      const byStart = [...chat.children].sort((a, b) => (a.start < b.start ? -1 : 1))
      expect(byStart.map((s) => [s.name, s.kind])).toEqual([
        [`chat ${model}`, FakeCollector.SpanKind.client],
        ["execute_tool calculator", FakeCollector.SpanKind.internal],
        [`chat ${model}`, FakeCollector.SpanKind.client]
      ])
      // No span per chunk: the request, two model calls and the tool are the whole trace.
      expect(spans.filter((s) => s.traceId === chat.root.traceId)).toHaveLength(4)
      const [firstCall, tool, secondCall] = byStart
      if (firstCall === undefined || tool === undefined || secondCall === undefined) return expect.fail("missing children")
      expect(firstCall.attributes["gen_ai.response.finish_reasons"]).toEqual(["tool_calls"])
      expect(secondCall.attributes["gen_ai.response.finish_reasons"]).toEqual(["stop"])
      expect(tool.attributes).toMatchObject({
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "calculator",
        "gen_ai.tool.call.id": end.data.tool_rounds?.[0]?.executions[0]?.tool_call.id
      })
      // Real times: the children lie within the request, one after the other.
      for (const child of byStart) {
        expect(child.traceId).toBe(chat.root.traceId)
        expect(child.start).toBeGreaterThanOrEqual(chat.root.start)
        expect(child.end).toBeLessThanOrEqual(chat.root.end)
        expect(child.end).toBeGreaterThanOrEqual(child.start)
      }
      expect(firstCall.end).toBeLessThanOrEqual(tool.start)
      expect(tool.end).toBeLessThanOrEqual(secondCall.start)
      const nowNs = BigInt(Date.now()) * 1_000_000n
      expect(nowNs - chat.root.start).toBeLessThan(60_000_000_000n)

      const resumable = traceOf(spans, "resumable-1")
      expect(resumable.root.name).toBe(`chat ${model}`)
      expect(resumable.children.map((s) => [s.name, s.kind])).toEqual([[`chat ${model}`, FakeCollector.SpanKind.client]])

      // The embedding, with its one model call.
      const embedding = traceOf(spans, "embed-1")
      expect(embedding.root.name).toMatch(/^embeddings /)
      expect(embedding.root.attributes).toMatchObject({
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "offline",
        "aibase.request_id": "embed-1"
      })
      expect(embedding.root.attributes["gen_ai.usage.input_tokens"]).toBeGreaterThan(0)
      expect(embedding.children.map((s) => [s.name, s.kind])).toEqual([[embedding.root.name, FakeCollector.SpanKind.client]])

      // The failure: error.type and an error status, on the request and on its model call.
      const failure = traceOf(spans, "fail-1")
      expect(failure.root.name).toBe(`chat ${model}`)
      expect(failure.root.status).toBe(FakeCollector.StatusCode.error)
      expect(failure.root.attributes["error.type"]).toBe("offline_rate_limit")
      expect(failure.root.attributes["aibase.error.category"]).toBe("rate_limit")
      expect(failure.children.map((s) => [s.attributes["error.type"], s.status])).toEqual([
        ["offline_rate_limit", FakeCollector.StatusCode.error]
      ])

      // The direct tool call is itself the tool's span.
      const direct = traceOf(spans, "tool-1")
      expect(direct.root.name).toBe("execute_tool calculator")
      expect(direct.root.attributes).toMatchObject({
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "calculator",
        "gen_ai.tool.call.id": "call_direct"
      })
      expect(direct.children).toEqual([])

      // /rpc: the same spans, from the same records.
      const rpcSpans = spans.filter(isRpc)
      expect(rpcSpans.map((s) => s.name)).toEqual([`chat ${model}`, `chat ${model}`])
      expect(new Set(rpcSpans.map((s) => s.attributes["aibase.request.type"]))).toEqual(
        new Set(["chat_completion", "chat_completion_stream"])
      )
      for (const span of rpcSpans) expect(span.attributes["gen_ai.usage.output_tokens"]).toBeGreaterThan(0)

      expect(spans.some((s) => s.attributes["aibase.request_id"] === "ping-1")).toBe(false)
      // Every trace is a request's: no HTTP or SQL spans of Effect's own.
      for (const root of spans.filter((s) => s.parentSpanId === undefined)) {
        expect(root.attributes["aibase.request_id"], root.name).toBeTypeOf("string")
      }
    }), { timeout: 60_000 })

  it.scopedLive("spans still buffered when the server is stopped are sent before it exits", () =>
    Effect.gen(function*() {
      const collector = yield* FakeCollector.start
      // The default export interval (5 s) is longer than the test.
      const server = yield* startServer({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url })
      const client = yield* WsClient.connect(`ws://127.0.0.1:${server.port}/ws`)
      yield* client.request({ type: "chat_completion", request_id: "last", payload: { messages: [{ role: "user", content: "hi" }] } })
      expect(collector.spans()).toEqual([])
      expect(yield* Effect.promise(() => ServerProcess.stop(server))).toBe(0)
      expect(collector.spans().filter(withRequestId("last")).map((s) => s.resource["service.name"])).toEqual(["aibase"])
    }), { timeout: 60_000 })
})
