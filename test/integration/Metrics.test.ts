/**
 * GET /metrics after a mixed run through the real openai SDK against the
 * fake upstream: every series the operators' dashboards read is there,
 * with bounded labels, and each counter moved by exactly what was done.
 */
import { HttpServer } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { Behaviour, FakeOpenAIService, textChunks, toolCallChunks } from "../support/FakeOpenAI.js"
import * as Prometheus from "../support/Prometheus.js"
import { rpcClient } from "../support/RpcTestClient.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const TOKEN = "metrics-token-0123456789"

const serve = (env: Record<string, string>) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(TestServer.layerWithFakeUpstream(env))
    const server = Context.get(context, HttpServer.HttpServer)
    const port = server.address._tag === "TcpAddress" ? server.address.port : 0
    return {
      fake: Context.get(context, FakeOpenAIService),
      http: `http://127.0.0.1:${port}`,
      ws: (token: string) => `ws://127.0.0.1:${port}/ws?token=${token}`,
      rpc: `ws://127.0.0.1:${port}/rpc?token=${TOKEN}`
    }
  })

const scrape = (http: string, token?: string) =>
  Effect.promise(async () => {
    const response = await fetch(`${http}/metrics`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } })
    return { status: response.status, contentType: response.headers.get("content-type"), text: await response.text() }
  })

const samplesOf = (http: string) =>
  Effect.flatMap(scrape(http, TOKEN), ({ status, text }) =>
    status === 200 ? Effect.succeed(Prometheus.parse(text)) : Effect.dieMessage(`/metrics answered ${status}`))

const chat = (requestId: string, content = "hello there") => ({
  type: "chat_completion" as const,
  request_id: requestId,
  payload: { messages: [{ role: "user" as const, content }] }
})

const stream = (requestId: string, extra: Record<string, unknown> = {}) => ({
  type: "chat_completion_stream" as const,
  request_id: requestId,
  payload: { messages: [{ role: "user" as const, content: "hello there" }], ...extra }
})

describe("/metrics", () => {
  it.scopedLive("counts a mixed run by type, transport, status, operation and reason", () =>
    Effect.gen(function*() {
      const server = yield* serve({ AUTH_TOKENS: TOKEN })
      const { fake } = server
      const before = yield* samplesOf(server.http)
      const delta = (name: string, labels: Readonly<Record<string, string>> = {}) =>
        Effect.map(samplesOf(server.http), (after) => Prometheus.sum(after, name, labels) - Prometheus.sum(before, name, labels))

      const client = yield* WsClient.connect(server.ws(TOKEN))
      for (const id of ["p1", "p2", "p3"]) yield* client.request({ type: "ping", request_id: id, payload: {} })
      yield* client.request(chat("chat-ok", "a secret message text"))
      yield* client.request(stream("stream-ok"))
      fake.enqueue(
        Behaviour.stream(toolCallChunks([{ id: "c1", name: "calculator", arguments: { expression: "2+2" } }], { includeUsage: true })),
        Behaviour.stream(textChunks("It is 4.", { includeUsage: true }))
      )
      yield* client.request(stream("tools", { tools: ["calculator"], auto_execute_tools: true }))
      yield* client.request({ type: "embedding", request_id: "embed", payload: { input: "some text" } })
      yield* client.request({
        type: "tool_execute",
        request_id: "tool",
        payload: { tool_call: { id: "t1", type: "function", function: { name: "calculator", arguments: "{\"expression\":\"1+1\"}" } } }
      })
      fake.enqueue(Behaviour.fatal(429, "slow down"))
      yield* client.request(chat("limited"))
      // Rejected frames: not JSON, and an unknown type.
      client.send("{not json")
      client.send(JSON.stringify({ type: "nonsense", request_id: "n1", payload: {} }))
      yield* client.waitForFrames((frames) => frames.filter((frame) => frame.type === "error" && frame.request_id !== "limited").length >= 2, {
        message: "two rejected frames answered"
      })

      // A cancelled stream and a client that leaves mid-stream: both abort their upstream request.
      fake.enqueue(Behaviour.hang)
      client.send(stream("cancel-me"))
      yield* fake.awaitRequests(fake.requestCount + 1)
      client.send({ type: "cancel", request_id: "c", payload: { request_id: "cancel-me" } })
      yield* client.collect("cancel-me")
      fake.enqueue(Behaviour.hang)
      yield* Effect.scoped(Effect.gen(function*() {
        const leaving = yield* WsClient.connect(server.ws(TOKEN))
        const requested = fake.requestCount
        leaving.send(stream("left"))
        yield* fake.awaitRequests(requested + 1)
        yield* leaving.close()
      }))
      yield* fake.awaitAborted(2)

      // A refused connection, and a request over /rpc.
      const refused = yield* Effect.flip(WsClient.connect(server.ws("wrong-token")))
      expect(refused.message).toContain("401")
      const rpc = yield* rpcClient(server.rpc)
      yield* rpc.ChatCompletion({ messages: [{ role: "user", content: "over rpc" }] })

      // Counters move when a request's fiber ends, just after its last frame: wait for the last of them.
      yield* Wait.poll(delta("aibase_requests_total"), (n) => n >= 12, { message: "12 requests counted" })
      const requests = (labels: Readonly<Record<string, string>>) => delta("aibase_requests_total", labels)
      expect(yield* requests({ type: "ping", transport: "ws", status: "ok" })).toBe(3)
      expect(yield* requests({ type: "chat_completion", transport: "ws", status: "ok" })).toBe(1)
      expect(yield* requests({ type: "chat_completion", transport: "ws", status: "rate_limit" })).toBe(1)
      expect(yield* requests({ type: "chat_completion_stream", transport: "ws", status: "ok" })).toBe(2)
      expect(yield* requests({ type: "chat_completion_stream", transport: "ws", status: "cancelled" })).toBe(2)
      expect(yield* requests({ type: "embedding", transport: "ws", status: "ok" })).toBe(1)
      expect(yield* requests({ type: "tool_execute", transport: "ws", status: "ok" })).toBe(1)
      expect(yield* requests({ type: "chat_completion", transport: "rpc", status: "ok" })).toBe(1)
      expect(yield* delta("aibase_requests_total")).toBe(12)

      expect(yield* delta("aibase_frames_rejected_total", { code: "invalid_json" })).toBe(1)
      expect(yield* delta("aibase_frames_rejected_total", { code: "unknown_type" })).toBe(1)
      expect(yield* delta("aibase_connections_refused_total", { reason: "unauthorized" })).toBe(1)
      expect(yield* delta("aibase_upstream_aborts_total", { reason: "cancel" })).toBe(1)
      expect(yield* delta("aibase_upstream_aborts_total", { reason: "disconnect" })).toBe(1)

      const chatLabels = { gen_ai_operation_name: "chat", gen_ai_provider_name: "openai", gen_ai_request_model: "gpt-4o-mini" }
      // Whole (2 on /ws, 1 on /rpc) and streamed (2 ok, 2 stopped) completions.
      expect(yield* delta("gen_ai_client_operation_duration_seconds_count", chatLabels)).toBe(7)
      expect(yield* delta("gen_ai_client_operation_duration_seconds_count", { gen_ai_operation_name: "embeddings" })).toBe(1)
      expect(yield* delta("gen_ai_client_operation_time_to_first_chunk_seconds_count", chatLabels)).toBe(2)
      const input = yield* delta("gen_ai_client_token_usage_sum", { ...chatLabels, gen_ai_token_type: "input" })
      const output = yield* delta("gen_ai_client_token_usage_sum", { ...chatLabels, gen_ai_token_type: "output" })
      expect(input).toBeGreaterThan(0)
      expect(output).toBeGreaterThan(0)
      expect(yield* delta("gen_ai_client_token_usage_count", { gen_ai_operation_name: "embeddings", gen_ai_token_type: "input" })).toBe(1)

      // The loop's calculator call and the direct one.
      expect(yield* delta("aibase_tool_executions_total", { tool: "calculator", status: "ok" })).toBe(2)
      expect(yield* delta("aibase_tool_duration_seconds_count", { tool: "calculator" })).toBe(2)

      const after = yield* samplesOf(server.http)
      // One /ws client is still connected (and the /rpc one).
      expect(Prometheus.sum(after, "aibase_connections", { transport: "ws" })).toBe(1)
      expect(Prometheus.sum(after, "aibase_connections", { transport: "rpc" })).toBe(1)
      expect(Prometheus.sum(after, "aibase_requests_in_flight")).toBe(0)

      // Bounded cardinality: no label carries a request id, message text or token.
      const values = after.flatMap((sample) => Object.values(sample.labels))
      for (const forbidden of ["chat-ok", "cancel-me", "p1", "a secret message text", "hello there", TOKEN]) {
        expect(values).not.toContain(forbidden)
      }
    }), { timeout: 60_000 })

  it.scopedLive("follows AUTH_TOKENS, unless METRICS_PUBLIC", () =>
    Effect.gen(function*() {
      const guarded = yield* serve({ AUTH_TOKENS: TOKEN })
      expect((yield* scrape(guarded.http)).status).toBe(401)
      const ok = yield* scrape(guarded.http, TOKEN)
      expect(ok.status).toBe(200)
      expect(ok.contentType).toContain("text/plain; version=0.0.4")
      expect(ok.text).toContain("# TYPE aibase_requests_total counter")
      expect(ok.text).toContain("# TYPE gen_ai_client_operation_duration_seconds histogram")

      const open = yield* serve({ AUTH_TOKENS: TOKEN, METRICS_PUBLIC: "true" })
      expect((yield* scrape(open.http)).status).toBe(200)
      // Only /metrics opens: the rest still needs the token.
      const info = yield* Effect.promise(() => fetch(`${open.http}/info`))
      expect(info.status).toBe(401)
    }))
})
