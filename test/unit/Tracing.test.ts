/**
 * The spans of a finished request, built from its RequestRecord and sent to
 * a tracer that keeps them in memory (no network): names, kinds, parents,
 * times and the GenAI attributes; nothing without a tracer; and what the
 * tool loop (Chat, on the offline model) notes in the record for them.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit, Layer, Option, Tracer } from "effect"
import { AppConfig } from "../../src/config/AppConfig.js"
import { RequestRecord } from "../../src/ledger/RequestRecord.js"
import * as RequestRecords from "../../src/ledger/RequestRecord.js"
import * as Tracing from "../../src/observability/Tracing.js"
import * as OfflineModel from "../../src/openai/OfflineModel.js"
import { RateLimitError } from "../../src/protocol/Errors.js"
import type { ChatStreamEvent } from "../../src/protocol/Rpcs.js"
import { Chat } from "../../src/rpc/Chat.js"
import * as BuiltinTools from "../../src/tools/builtin/BuiltinTools.js"
import { ToolRegistry } from "../../src/tools/ToolRegistry.js"

interface Captured {
  readonly name: string
  readonly spanId: string
  readonly traceId: string
  readonly parentId: string | undefined
  readonly kind: Tracer.SpanKind
  readonly start: bigint
  readonly attributes: Map<string, unknown>
  end?: bigint
  exit?: Exit.Exit<unknown, unknown>
}

/** A tracer that keeps every span it is given. */
const capturing = () => {
  const spans: Array<Captured> = []
  let next = 0
  const tracer = Tracer.make({
    span(name, parent, context, links, startTime, kind) {
      const spanId = `s${++next}`
      const traceId = Option.match(parent, { onNone: () => `t${next}`, onSome: (p) => p.traceId })
      const captured: Captured = {
        name,
        spanId,
        traceId,
        parentId: Option.getOrUndefined(Option.map(parent, (p) => p.spanId)),
        kind,
        start: startTime,
        attributes: new Map()
      }
      spans.push(captured)
      const span: Tracer.Span = {
        _tag: "Span",
        name,
        spanId,
        traceId,
        parent,
        context,
        get status(): Tracer.SpanStatus {
          return captured.end === undefined || captured.exit === undefined
            ? { _tag: "Started", startTime }
            : { _tag: "Ended", startTime, endTime: captured.end, exit: captured.exit }
        },
        attributes: captured.attributes,
        links,
        sampled: true,
        kind,
        end(endTime, exit) {
          captured.end = endTime
          captured.exit = exit
        },
        attribute(key, value) {
          captured.attributes.set(key, value)
        },
        event() {},
        addLinks() {}
      }
      return span
    },
    context: (f) => f()
  })
  return { tracer, spans }
}

const byName = (spans: ReadonlyArray<Captured>, name: string): Captured => {
  const span = spans.find((s) => s.name === name)
  if (span === undefined) return expect.fail(`no span named ${name} in ${spans.map((s) => s.name).join(", ")}`)
  return span
}

const ws: RequestRecords.Caller = { transport: "ws", connectionId: "i/1", principal: "anonymous" }

/** A streamed chat with one tool round, filled in as the handlers and Chat would. */
const toolLoopRecord = (): RequestRecord => {
  const record = new RequestRecord("req-1", "chat_completion_stream", ws, false, 1_700_000_000_000, 1000)
  record.requested("gpt-4o-mini", [])
  record.provider = "openai"
  record.modelAnswered = "gpt-4o-mini-2024-07-18"
  record.firstTokenAt = 1010
  record.addUsage({ prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 })
  record.finishReasons = ["stop"]
  record.toolRounds = 1
  record.addUpstreamCall({
    model: "gpt-4o-mini",
    startHr: 1001,
    endHr: 1020,
    error: null,
    responseModel: null,
    inputTokens: 10,
    outputTokens: 5,
    finishReason: "tool_calls"
  })
  record.addToolCall({ name: "calculator", callId: "call_1", startHr: 1020.5, endHr: 1021.25, error: null })
  record.addUpstreamCall({
    model: "gpt-4o-mini",
    startHr: 1022,
    endHr: 1040,
    error: null,
    responseModel: null,
    inputTokens: 20,
    outputTokens: 7,
    finishReason: "stop"
  })
  return record
}

/** Runs `requestSpans` with the tracer installed. */
const traced = (record: RequestRecord) => {
  const { spans, tracer } = capturing()
  return Effect.as(Effect.withTracer(Tracing.requestSpans(record), tracer), spans)
}

describe("requestSpans", () => {
  it.effect("a streamed chat with a tool round: the request span, a client span per model call, one per tool", () =>
    Effect.gen(function*() {
      const record = toolLoopRecord()
      // The request ends at hr 1041.5: 41.5 ms after its start.
      record.finish(Exit.void)
      record.finishedHr = 1041.5
      const spans = yield* traced(record)
      expect(spans.map((s) => s.name)).toEqual([
        "chat gpt-4o-mini",
        "chat gpt-4o-mini",
        "chat gpt-4o-mini",
        "execute_tool calculator"
      ])
      const [request, first, second, tool] = spans
      if (request === undefined || first === undefined || second === undefined || tool === undefined) {
        return expect.fail("expected four spans")
      }
      expect(request.parentId).toBeUndefined()
      expect(request.kind).toBe("server")
      for (const child of [first, second, tool]) {
        expect(child.parentId).toBe(request.spanId)
        expect(child.traceId).toBe(request.traceId)
      }
      expect([first.kind, second.kind, tool.kind]).toEqual(["client", "client", "internal"])

      // Real times, in epoch nanoseconds, anchored at the record's start.
      const ms = (offset: number) => BigInt((1_700_000_000_000 + offset) * 1000) * 1000n
      expect(request.start).toBe(ms(0))
      expect(request.end).toBe(ms(41.5))
      expect([first.start, first.end]).toEqual([ms(1), ms(20)])
      expect([tool.start, tool.end]).toEqual([ms(20.5), ms(21.25)])
      expect([second.start, second.end]).toEqual([ms(22), ms(40)])

      expect(Object.fromEntries(request.attributes)).toEqual({
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 30,
        "gen_ai.usage.output_tokens": 12,
        "gen_ai.response.finish_reasons": ["stop"],
        "aibase.request_id": "req-1",
        "aibase.request.type": "chat_completion_stream",
        "aibase.transport": "ws",
        "aibase.tool_rounds": 1,
        "aibase.time_to_first_token_ms": 10
      })
      expect(Object.fromEntries(first.attributes)).toEqual({
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.response.finish_reasons": ["tool_calls"]
      })
      expect(Object.fromEntries(tool.attributes)).toEqual({
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "calculator",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": "call_1"
      })
      for (const span of spans) expect(span.exit !== undefined && Exit.isSuccess(span.exit)).toBe(true)
    }))

  it.effect("a failed request: error.type (its code) on the span and the failed model call, an error status", () =>
    Effect.gen(function*() {
      const record = new RequestRecord("req-2", "chat_completion", ws, false)
      record.requested("gpt-4o-mini", [])
      record.provider = "offline"
      record.addUpstreamCall({
        model: "gpt-4o-mini",
        startHr: record.startedHr,
        endHr: record.startedHr + 1,
        error: "rate_limited",
        responseModel: null,
        inputTokens: null,
        outputTokens: null,
        finishReason: null
      })
      record.finish(Exit.fail(new RateLimitError({ code: "rate_limited", message: "slow down" })))
      const spans = yield* traced(record)
      const [request, upstream] = spans
      if (request === undefined || upstream === undefined) return expect.fail("expected two spans")
      expect(request.attributes.get("error.type")).toBe("rate_limited")
      expect(request.attributes.get("aibase.error.category")).toBe("rate_limit")
      expect(request.attributes.has("gen_ai.usage.input_tokens")).toBe(false)
      expect(upstream.attributes.get("error.type")).toBe("rate_limited")
      expect(upstream.attributes.has("gen_ai.response.model")).toBe(false)
      for (const span of [request, upstream]) {
        expect(span.exit !== undefined && Exit.isFailure(span.exit)).toBe(true)
      }
      // The exported failure is the code, not the request's error (its message may quote the client).
      expect(JSON.stringify(request.exit)).not.toContain("slow down")
    }))

  it.effect("a direct tool call is one span, `execute_tool <name>`, with the tool's attributes", () =>
    Effect.gen(function*() {
      const record = new RequestRecord("req-3", "tool_execute", ws, false)
      record.toolsCalled.push("get_weather")
      record.addToolCall({ name: "get_weather", callId: "c9", startHr: record.startedHr, endHr: record.startedHr + 2, error: "tool_error" })
      record.finish(Exit.void)
      const spans = yield* traced(record)
      expect(spans.map((s) => s.name)).toEqual(["execute_tool get_weather"])
      expect(Object.fromEntries(spans[0]?.attributes ?? [])).toEqual({
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": "c9",
        "aibase.request_id": "req-3",
        "aibase.request.type": "tool_execute",
        "aibase.transport": "ws",
        // The request succeeded, but the tool answered with an error.
        "error.type": "tool_error"
      })
    }))

  it.effect("an embedding: `embeddings <model>`", () =>
    Effect.gen(function*() {
      const record = new RequestRecord("req-4", "embedding", ws, false)
      record.requested("text-embedding-3-small", "hello")
      record.provider = "offline"
      record.onEmbedding({
        object: "list",
        data: [],
        model: "text-embedding-3-small",
        usage: { prompt_tokens: 2, total_tokens: 2 }
      })
      record.finish(Exit.void)
      const spans = yield* traced(record)
      expect(spans.map((s) => s.name)).toEqual(["embeddings text-embedding-3-small"])
      expect(spans[0]?.attributes.get("gen_ai.operation.name")).toBe("embeddings")
      expect(spans[0]?.attributes.get("gen_ai.usage.input_tokens")).toBe(2)
    }))

  it.effect("is a child of the fiber's current span, when it has one", () =>
    Effect.gen(function*() {
      const { spans, tracer } = capturing()
      const record = toolLoopRecord()
      record.finish(Exit.void)
      yield* Tracing.requestSpans(record).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer))
      const caller = byName(spans, "caller")
      const request = spans.find((s) => s.name === "chat gpt-4o-mini" && s.parentId === caller.spanId)
      expect(request?.traceId).toBe(caller.traceId)
    }))

  it.effect("sends nothing without a tracer, or before the record is finished", () =>
    Effect.gen(function*() {
      const finished = toolLoopRecord()
      finished.finish(Exit.void)
      // The default (native) tracer: nothing is built; it must not fail either.
      yield* Tracing.requestSpans(finished)
      const { spans, tracer } = capturing()
      yield* Tracing.requestSpans(toolLoopRecord()).pipe(Effect.withTracer(tracer))
      expect(spans).toEqual([])
    }))

  it.effect("still sends with Effect's own spans off (as the layer runs), as a trace of its own", () =>
    Effect.gen(function*() {
      const { spans, tracer } = capturing()
      const record = toolLoopRecord()
      record.finish(Exit.void)
      yield* Tracing.requestSpans(record).pipe(
        Effect.withSpan("caller"),
        Effect.withTracerEnabled(false),
        Effect.withTracer(tracer)
      )
      expect(spans.map((s) => s.name)).not.toContain("caller")
      expect(spans[0]?.parentId).toBeUndefined()
      expect(spans).toHaveLength(4)
    }))
})

describe("Tracing.config", () => {
  const load = (env: Record<string, string>) =>
    Effect.withConfigProvider(Tracing.config, ConfigProvider.fromMap(new Map(Object.entries(env))))

  it.effect("is off without an endpoint, or with OTEL_SDK_DISABLED", () =>
    Effect.gen(function*() {
      expect(yield* load({})).toEqual(Option.none())
      expect(yield* load({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_SDK_DISABLED: "true" })).toEqual(Option.none())
    }))

  it.effect("sends to <endpoint>/v1/traces, or to the traces endpoint as it is", () =>
    Effect.gen(function*() {
      expect(yield* load({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318/" })).toEqual(Option.some({
        url: "http://c:4318/v1/traces",
        serviceName: "aibase",
        exportInterval: undefined,
        headers: undefined,
        protocol: undefined
      }))
      const options = yield* load({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://t:4318/custom",
        OTEL_SERVICE_NAME: "gateway",
        OTEL_BSP_SCHEDULE_DELAY: "250",
        OTEL_EXPORTER_OTLP_HEADERS: "x-api-key=a%3Db,other = 2",
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf"
      })
      expect(Option.map(options, (o) => ({ ...o, exportInterval: String(o.exportInterval) }))).toEqual(Option.some({
        url: "http://t:4318/custom",
        serviceName: "gateway",
        exportInterval: "Duration(250ms)",
        headers: { "x-api-key": "a=b", other: "2" },
        protocol: "http/protobuf"
      }))
    }))
})

describe("the tool loop's record", () => {
  const ChatLive = Chat.layer({ model: "gpt-4o-mini" }).pipe(
    Layer.provide(Layer.mergeAll(OfflineModel.layer({ wordDelay: 0 }), BuiltinTools.layer.pipe(Layer.provideMerge(ToolRegistry.layer())))),
    Layer.provideMerge(AppConfig.layerFromEnv({ OFFLINE_WORD_DELAY_MS: "0" }))
  )

  it.effect("notes each model call and tool execution once, and the spans follow it", () =>
    Effect.gen(function*() {
      const chat = yield* Chat
      const config = yield* AppConfig
      const record = new RequestRecord("req-5", "chat_completion_stream", ws, false)
      record.requested(config.openai.model, [])
      let chunks = 0
      const sink = (event: ChatStreamEvent) => {
        if (event._tag === "chat_completion_stream_chunk") chunks++
        record.onStreamEvent(event)
        return undefined
      }
      yield* chat.push({
        messages: [{ role: "user", content: "What is 17 * 23?" }],
        tools: ["calculator"],
        auto_execute_tools: true
      })(sink).pipe(Effect.locally(RequestRecords.current, record))
      record.finish(Exit.void)

      expect(chunks).toBeGreaterThan(2)
      expect(record.provider).toBe("offline")
      expect(record.upstreamCalls.map((c) => [c.model, c.error, c.finishReason])).toEqual([
        [config.openai.model, null, "tool_calls"],
        [config.openai.model, null, "stop"]
      ])
      expect(record.toolCalls.map((c) => [c.name, c.error])).toEqual([["calculator", null]])
      expect(record.toolCalls[0]?.callId).toMatch(/^call_/)
      expect(record.finishReasons).toEqual(["stop"])
      const [first, second] = record.upstreamCalls
      const tool = record.toolCalls[0]
      if (first === undefined || second === undefined || tool === undefined) return expect.fail("missing calls")
      expect(first.endHr).toBeLessThanOrEqual(tool.startHr)
      expect(tool.endHr).toBeLessThanOrEqual(second.startHr)

      const spans = yield* traced(record)
      expect(spans.map((s) => s.name)).toEqual([
        `chat ${config.openai.model}`,
        `chat ${config.openai.model}`,
        `chat ${config.openai.model}`,
        "execute_tool calculator"
      ])
    }).pipe(Effect.provide(ChatLive)))

  it.effect("notes nothing outside a recorded request", () =>
    Effect.gen(function*() {
      const chat = yield* Chat
      const response = yield* chat.complete({
        messages: [{ role: "user", content: "What is 2 + 2?" }],
        tools: ["calculator"],
        auto_execute_tools: true
      })
      expect(response.tool_rounds?.length).toBe(1)
    }).pipe(Effect.provide(ChatLive)))

  it.effect("notes a failed model call with its code", () =>
    Effect.gen(function*() {
      const chat = yield* Chat
      const record = new RequestRecord("req-6", "chat_completion", ws, false)
      const exit = yield* chat.complete({ messages: [{ role: "user", content: "offline:fail:rate_limit" }] }).pipe(
        Effect.locally(RequestRecords.current, record),
        Effect.exit
      )
      expect(Exit.isFailure(exit)).toBe(true)
      expect(record.upstreamCalls.map((c) => c.error)).toEqual(["offline_rate_limit"])
    }).pipe(Effect.provide(ChatLive)))
})
