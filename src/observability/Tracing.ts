/**
 * OpenTelemetry traces of AIBase's requests, over OTLP/HTTP.
 *
 * With OTEL_EXPORTER_OTLP_ENDPOINT set, `layerConfig` installs
 * @effect/opentelemetry's OTLP tracer (no OpenTelemetry SDK) as the Effect
 * tracer; without it nothing is installed.
 *
 * The spans of a request are not opened while it runs: the hot path pays
 * nothing for them. When a model or tool request has finished, `requestSpans`
 * builds its span and children from its RequestRecord, with their real start
 * and end times, following the OpenTelemetry GenAI semantic conventions:
 *
 * - the request: `chat gpt-4o-mini`, `embeddings text-embedding-3-small`, or
 *   `execute_tool calculator` for a direct tool call (kind server);
 * - one child per model call: `chat gpt-4o-mini` (kind client);
 * - one child per tool the loop ran: `execute_tool calculator` (kind internal).
 */
import { OtlpSerialization, OtlpTracer } from "@effect/opentelemetry"
import { FetchHttpClient } from "@effect/platform"
import {
  Config,
  type ConfigError,
  Context,
  Duration,
  Effect,
  Exit,
  FiberRef,
  Layer,
  Option,
  Redacted,
  type Scope,
  Tracer
} from "effect"
import type { RequestRecord, ToolCallRecord, UpstreamCall } from "../ledger/RequestRecord.js"

export interface TracingOptions {
  /** Where spans are POSTed: the collector's full traces URL (`.../v1/traces`). */
  readonly url: string
  /** `service.name` of the resource (OTEL_SERVICE_NAME). */
  readonly serviceName: string
  /** How often buffered spans are sent (OTEL_BSP_SCHEDULE_DELAY). Default 5 seconds. */
  readonly exportInterval?: Duration.DurationInput | undefined
  /** Headers of every export, e.g. a backend's API key (OTEL_EXPORTER_OTLP_HEADERS). */
  readonly headers?: Readonly<Record<string, string>> | undefined
  /** `http/json` (the default) or `http/protobuf` (OTEL_EXPORTER_OTLP_PROTOCOL). */
  readonly protocol?: Protocol | undefined
  /**
   * Also export the spans Effect and its libraries open on their own: one
   * per plain HTTP request (health probes included), one per SQL statement
   * (ledger batches, stream leases). Default false: a trace is a model or
   * tool request, and those spans are not even built.
   */
  readonly effectSpans?: boolean | undefined
}

export type Protocol = "http/json" | "http/protobuf"

/** The OTLP tracer, exporting through `fetch`. */
export const make = (options: TracingOptions): Effect.Effect<Tracer.Tracer, never, Scope.Scope> =>
  OtlpTracer.make({
    url: options.url,
    resource: { serviceName: options.serviceName },
    exportInterval: options.exportInterval,
    headers: options.headers
  }).pipe(
    Effect.provide(Layer.merge(
      FetchHttpClient.layer,
      options.protocol === "http/protobuf" ? OtlpSerialization.layerProtobuf : OtlpSerialization.layerJson
    ))
  )

/**
 * Installs the OTLP tracer for everything built after it (provide it to the
 * server's layers). Buffered spans are sent when its scope closes.
 */
export const layer = (options: TracingOptions): Layer.Layer<never> =>
  Layer.scopedDiscard(Effect.gen(function*() {
    yield* Effect.withTracerScoped(yield* make(options))
    // `requestSpans` does not look at this flag: it only turns off the spans Effect would open itself.
    if (options.effectSpans !== true) yield* Effect.locallyScoped(FiberRef.currentTracerEnabled, false)
  }))

/** `k1=v1,k2=v2` with URL-encoded values (the OTEL_EXPORTER_OTLP_HEADERS format). */
const parseHeaders = (text: string): Record<string, string> => {
  const headers: Record<string, string> = {}
  for (const pair of text.split(",")) {
    const at = pair.indexOf("=")
    if (at <= 0) continue
    const key = pair.slice(0, at).trim()
    const raw = pair.slice(at + 1).trim()
    let value = raw
    try {
      value = decodeURIComponent(raw)
    } catch {
      // Not URL-encoded after all: keep it as written.
    }
    if (key !== "") headers[key] = value
  }
  return headers
}

/** The traces-specific variable wins over the general one. */
const firstSome = <A>(specific: Option.Option<A>, general: Option.Option<A>): Option.Option<A> =>
  Option.orElse(specific, () => general)

const protocolConfig = (name: string) => Config.option(Config.literal("http/json", "http/protobuf")(name))

/**
 * The options from the standard OpenTelemetry variables, or none when
 * neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
 * is set, or OTEL_SDK_DISABLED is true.
 */
export const config: Config.Config<Option.Option<TracingOptions>> = Config.all({
  disabled: Config.boolean("OTEL_SDK_DISABLED").pipe(Config.withDefault(false)),
  endpoint: Config.option(Config.nonEmptyString("OTEL_EXPORTER_OTLP_ENDPOINT")),
  tracesEndpoint: Config.option(Config.nonEmptyString("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
  serviceName: Config.nonEmptyString("OTEL_SERVICE_NAME").pipe(Config.withDefault("aibase")),
  // Milliseconds, as the OpenTelemetry SDKs read it.
  scheduleDelay: Config.option(Config.integer("OTEL_BSP_SCHEDULE_DELAY").pipe(
    Config.validate({ message: "Expected a positive number of milliseconds", validation: (n) => n > 0 })
  )),
  headers: Config.option(Config.redacted("OTEL_EXPORTER_OTLP_TRACES_HEADERS")).pipe(
    Config.zipWith(Config.option(Config.redacted("OTEL_EXPORTER_OTLP_HEADERS")), firstSome)
  ),
  protocol: protocolConfig("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").pipe(
    Config.zipWith(protocolConfig("OTEL_EXPORTER_OTLP_PROTOCOL"), firstSome)
  )
}).pipe(Config.map(({ disabled, endpoint, tracesEndpoint, serviceName, scheduleDelay, headers, protocol }) => {
  // The signal's own endpoint is used as it is; the general one is a base URL (OTLP exporter spec).
  const url = Option.orElse(tracesEndpoint, () => Option.map(endpoint, (base) => `${base.replace(/\/+$/, "")}/v1/traces`))
  if (disabled || Option.isNone(url)) return Option.none()
  return Option.some<TracingOptions>({
    url: url.value,
    serviceName,
    exportInterval: Option.getOrUndefined(Option.map(scheduleDelay, Duration.millis)),
    headers: Option.getOrUndefined(Option.map(headers, (value) => parseHeaders(Redacted.value(value)))),
    protocol: Option.getOrUndefined(protocol)
  })
}))

/** The OTLP tracer when OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise nothing at all. */
export const layerConfig: Layer.Layer<never, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.map(config, Option.match({ onNone: () => Layer.empty, onSome: layer }))
)

// spans of a finished request

/** The tracer a fiber has when none was installed: spans through it go nowhere. */
const nativeTracer: Tracer.Tracer = Effect.runSync(Effect.tracer)

/** Whether a tracer is installed (spans go somewhere). */
export const isTracing: Effect.Effect<boolean> = Effect.map(Effect.tracer, (tracer) => tracer !== nativeTracer)

/**
 * Sends the spans of a finished request (call `record.finish` first) to the
 * current tracer. Without an installed tracer it does nothing: one look at
 * the fiber. The request's span is a child of the fiber's current span when
 * it has one (and Effect's own spans are on), else a trace of its own.
 */
export const requestSpans = (record: RequestRecord): Effect.Effect<void> =>
  Effect.withFiberRuntime((fiber) => {
    const tracer = fiber.currentTracer
    if (tracer === nativeTracer || record.outcome === undefined) return Effect.void
    // With Effect's own spans off (see `layer`), the fiber's spans are no-ops, not parents.
    const parent = fiber.getFiberRef(FiberRef.currentTracerEnabled) ? Option.fromNullable(fiber.currentSpan) : Option.none()
    emit(tracer, record, parent)
    return Effect.void
  })

/** Builds and ends the spans of a finished record (synchronously: the tracer only buffers them). */
const emit = (tracer: Tracer.Tracer, record: RequestRecord, parent: Option.Option<Tracer.AnySpan>): void => {
  const outcome = record.outcome
  if (outcome === undefined) return
  const operation = record.operation
  const time = clockOf(record)
  // A direct tool call is itself the tool's execution (see Handlers' ToolExecute).
  const direct = operation === "execute_tool"
  const tool = direct ? record.toolCalls[0] : undefined
  const subject = direct ? (tool?.name ?? record.toolsCalled[0] ?? null) : (record.modelRequested ?? record.modelAnswered)

  const span = tracer.span(spanName(operation, subject), parent, Context.empty(), [], time(record.startedHr), "server")
  span.attribute("gen_ai.operation.name", operation)
  if (record.provider !== null) span.attribute("gen_ai.provider.name", record.provider)
  if (record.modelRequested !== null) span.attribute("gen_ai.request.model", record.modelRequested)
  if (record.modelAnswered !== null) span.attribute("gen_ai.response.model", record.modelAnswered)
  if (record.inputTokens !== null) span.attribute("gen_ai.usage.input_tokens", record.inputTokens)
  if (record.outputTokens !== null) span.attribute("gen_ai.usage.output_tokens", record.outputTokens)
  if (record.finishReasons.length > 0) span.attribute("gen_ai.response.finish_reasons", [...record.finishReasons])
  span.attribute("aibase.request_id", record.requestId)
  span.attribute("aibase.request.type", record.type)
  span.attribute("aibase.transport", record.caller.transport)
  if (record.toolRounds > 0) span.attribute("aibase.tool_rounds", record.toolRounds)
  const ttft = record.timeToFirstTokenMs
  if (ttft !== null) span.attribute("aibase.time_to_first_token_ms", Math.round(ttft * 1000) / 1000)
  if (tool !== undefined) toolAttributes(span, tool)
  else if (direct && subject !== null) span.attribute("gen_ai.tool.name", subject)

  const error = outcome.status === "ok" ? (tool?.error ?? null) : outcome.code ?? outcome.status
  if (outcome.status !== "ok") span.attribute("aibase.error.category", outcome.status)

  if (!direct) {
    for (const call of record.upstreamCalls) upstreamSpan(tracer, span, time, operation, record, call)
    for (const call of record.toolCalls) toolSpan(tracer, span, time, call)
  }
  end(span, time(record.finishedHr), error)
}

/** `{operation} {model}`, or the operation alone when no model is known. */
const spanName = (operation: string, model: string | null): string => model === null ? operation : `${operation} ${model}`

/**
 * Epoch nanoseconds of a `performance.now()` reading, anchored at the
 * record's start (its wall-clock time), so that the spans of one request
 * agree with each other to the microsecond.
 */
const clockOf = (record: RequestRecord) => (hr: number): bigint =>
  BigInt(Math.round((record.startedAt + (hr - record.startedHr)) * 1000)) * 1000n

const upstreamSpan = (
  tracer: Tracer.Tracer,
  parent: Tracer.Span,
  time: (hr: number) => bigint,
  operation: string,
  record: RequestRecord,
  call: UpstreamCall
): void => {
  const span = tracer.span(spanName(operation, call.model), Option.some(parent), parent.context, [], time(call.startHr), "client")
  span.attribute("gen_ai.operation.name", operation)
  if (record.provider !== null) span.attribute("gen_ai.provider.name", record.provider)
  span.attribute("gen_ai.request.model", call.model)
  const responseModel = call.responseModel ?? (call.error === null ? record.modelAnswered : null)
  if (responseModel !== null) span.attribute("gen_ai.response.model", responseModel)
  if (call.inputTokens !== null) span.attribute("gen_ai.usage.input_tokens", call.inputTokens)
  if (call.outputTokens !== null) span.attribute("gen_ai.usage.output_tokens", call.outputTokens)
  if (call.finishReason !== null) span.attribute("gen_ai.response.finish_reasons", [call.finishReason])
  end(span, time(call.endHr), call.error)
}

const toolSpan = (tracer: Tracer.Tracer, parent: Tracer.Span, time: (hr: number) => bigint, call: ToolCallRecord): void => {
  const span = tracer.span(`execute_tool ${call.name}`, Option.some(parent), parent.context, [], time(call.startHr), "internal")
  span.attribute("gen_ai.operation.name", "execute_tool")
  toolAttributes(span, call)
  end(span, time(call.endHr), call.error)
}

const toolAttributes = (span: Tracer.Span, call: ToolCallRecord): void => {
  span.attribute("gen_ai.tool.name", call.name)
  span.attribute("gen_ai.tool.type", "function")
  if (call.callId !== null) span.attribute("gen_ai.tool.call.id", call.callId)
}

/**
 * Ends a span, with `error.type` and an error status when it failed. The
 * exit carries only the error's code: the request's own error (its message,
 * its cause) is not exported.
 */
const end = (span: Tracer.Span, endTime: bigint, error: string | null): void => {
  if (error === null) {
    span.end(endTime, Exit.void)
    return
  }
  span.attribute("error.type", error)
  span.end(endTime, Exit.fail(new RequestFailed(error)))
}

/** What a failed span's status says: the error code only. */
class RequestFailed extends Error {
  constructor(readonly code: string) {
    super(code)
    this.name = "RequestFailed"
    // A stack would point here, not at the failure: the code is the whole story.
    this.stack = `RequestFailed: ${code}`
  }
}
