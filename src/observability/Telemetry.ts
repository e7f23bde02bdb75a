/**
 * What AIBase tells its operators about the requests it serves: the metrics
 * (see Metrics), one log line per finished model or tool request, its
 * spans (see Tracing) and the console's time series (see ConsoleSeries,
 * when it is provided).
 *
 * The transports call it once when a request starts and once when it ends,
 * synchronously and never per chunk; a recorded request's record is read
 * once more when it finishes (`finished`).
 */
import { Config, type ConfigError, Context, Effect, Exit, FiberRef, Layer, LogLevel, Option } from "effect"
import type { Ledger } from "../ledger/Ledger.js"
import { OpenAi } from "../openai/OpenAi.js"
import { type Outcome, outcomeOf, type RequestRecord } from "../ledger/RequestRecord.js"
import { ConsoleSeries } from "./ConsoleSeries.js"
import * as Metrics from "./Metrics.js"
import * as Tracing from "./Tracing.js"

export interface TelemetryOptions {
  /** Update the metrics (METRICS_ENABLED). Default true; off, /metrics shows no request series. */
  readonly metrics?: boolean | undefined
  /** One info line per finished model or tool request (REQUEST_LOG). Default true. */
  readonly requestLog?: boolean | undefined
  /** Distinct model and tool names kept as metric labels; later ones are labelled `other`. Default 100. */
  readonly maxLabelValues?: number | undefined
}

export interface TelemetryShape {
  /** A request of this type (its /ws name) started. */
  readonly requestStarted: (type: string) => void
  /** A request ended with this exit (every request, recorded or not). */
  readonly requestEnded: (type: string, transport: string, exit: Exit.Exit<unknown, unknown>) => void
  /** A recorded request finished: its histograms, log line, spans and console series. Call `record.finish` first. */
  readonly finished: (record: RequestRecord) => Effect.Effect<void>
  readonly connectionRefused: (reason: string) => void
  readonly frameRejected: (code: string) => void
}

export class Telemetry extends Context.Tag("aibase/Telemetry")<Telemetry, TelemetryShape>() {
  static readonly make = (options: TelemetryOptions = {}) =>
    Effect.gen(function*() {
      const provider = (yield* OpenAi).provider
      // The console's charts, when the app serves the console.
      const series = Option.getOrUndefined(yield* Effect.serviceOption(ConsoleSeries))
      // Decided once: whether the log line would be written (REQUEST_LOG and LOG_LEVEL), and whether spans go anywhere.
      const logging = (options.requestLog ?? true) &&
        !LogLevel.lessThan(LogLevel.Info, yield* FiberRef.get(FiberRef.currentMinimumLogLevel))
      const tracing = yield* Tracing.isTracing
      const bounded = new Metrics.BoundedValues(options.maxLabelValues ?? 100)
      const labels = new Metrics.Labelled()

      const byType = (type: string) => labels.get(type, () => [["type", type]])

      const requestStarted = (type: string): void => {
        Metrics.requestsInFlight.unsafeUpdate(1, byType(type))
      }

      const requestEnded = (type: string, transport: string, exit: Exit.Exit<unknown, unknown>): void => {
        Metrics.requestsInFlight.unsafeUpdate(-1, byType(type))
        const status = Exit.isSuccess(exit) ? "ok" : outcomeOf(exit).status
        Metrics.requests.unsafeUpdate(
          1,
          labels.get(`${type}\0${transport}\0${status}`, () => [["type", type], ["transport", transport], ["status", status]])
        )
      }

      const finished = (record: RequestRecord): Effect.Effect<void> => {
        const outcome = record.outcome
        if (outcome === undefined) return Effect.void
        series?.onFinished(record)
        const operation = record.operation
        const model = bounded.of(record.modelRequested ?? "unknown")
        const genAi = (extra: string, more: ReadonlyArray<readonly [string, string]>) =>
          labels.get(`${operation}\0${model}\0${extra}`, () => [
            ["gen_ai.operation.name", operation],
            ["gen_ai.provider.name", provider],
            ["gen_ai.request.model", model],
            ...more
          ])
        if (operation !== "execute_tool") {
          const base = genAi("", [])
          Metrics.operationDuration.unsafeUpdate(record.durationMs / 1000, base)
          const ttft = record.timeToFirstTokenMs
          if (ttft !== null) Metrics.timeToFirstChunk.unsafeUpdate(ttft / 1000, base)
          if (record.inputTokens !== null) {
            Metrics.tokenUsage.unsafeUpdate(record.inputTokens, genAi("input", [["gen_ai.token.type", "input"]]))
          }
          if (record.outputTokens !== null) {
            Metrics.tokenUsage.unsafeUpdate(record.outputTokens, genAi("output", [["gen_ai.token.type", "output"]]))
          }
          for (const call of record.upstreamCalls) {
            const reason = call.error === null ? undefined : ABORT_REASONS[call.error]
            if (reason !== undefined) {
              Metrics.upstreamAborts.unsafeUpdate(1, labels.get(`abort\0${reason}`, () => [["reason", reason]]))
            }
          }
        }
        for (const call of record.toolCalls) {
          const tool = bounded.of(call.name)
          const status = call.error === null ? "ok" : "error"
          Metrics.toolExecutions.unsafeUpdate(1, labels.get(`tool\0${tool}\0${status}`, () => [["tool", tool], ["status", status]]))
          Metrics.toolDuration.unsafeUpdate((call.endHr - call.startHr) / 1000, labels.get(`tool_duration\0${tool}`, () => [["tool", tool]]))
        }
        return reported(record)
      }

      /** The log line and the spans of a finished request; nothing at all when neither is wanted. */
      const reported = (record: RequestRecord): Effect.Effect<void> => {
        const outcome = record.outcome
        if (outcome === undefined || (!logging && !tracing)) return Effect.void
        if (!tracing) return line(record, outcome)
        return logging ? Effect.zipRight(line(record, outcome), Tracing.requestSpans(record)) : Tracing.requestSpans(record)
      }

      const line = (record: RequestRecord, outcome: Outcome): Effect.Effect<void> =>
        Effect.logInfo("request finished").pipe(
          Effect.annotateLogs({
            request_id: record.requestId,
            transport: record.caller.transport,
            type: record.type,
            model: record.modelRequested,
            status: outcome.status,
            code: outcome.code,
            ttft_ms: roundMs(record.timeToFirstTokenMs),
            duration_ms: roundMs(record.durationMs),
            input_tokens: record.inputTokens,
            output_tokens: record.outputTokens,
            tool_rounds: record.toolRounds
          })
        )

      if (options.metrics === false) {
        return Telemetry.of({
          requestStarted: () => {},
          requestEnded: () => {},
          finished: (record) => {
            series?.onFinished(record)
            return reported(record)
          },
          connectionRefused: () => {},
          frameRejected: () => {}
        })
      }
      return Telemetry.of({
        requestStarted,
        requestEnded,
        finished,
        connectionRefused: (reason) =>
          Metrics.connectionsRefused.unsafeUpdate(1, labels.get(`refused\0${reason}`, () => [["reason", reason]])),
        frameRejected: (code) =>
          Metrics.framesRejected.unsafeUpdate(1, labels.get(`frame\0${code}`, () => [["code", code]]))
      })
    })

  static readonly layer = (options: TelemetryOptions = {}): Layer.Layer<Telemetry, never, OpenAi> =>
    Layer.effect(Telemetry, Telemetry.make(options))

  /** METRICS_ENABLED and REQUEST_LOG. */
  static readonly config: Config.Config<TelemetryOptions> = Config.all({
    metrics: Config.boolean("METRICS_ENABLED").pipe(Config.withDefault(true)),
    requestLog: Config.boolean("REQUEST_LOG").pipe(Config.withDefault(true))
  })

  static readonly layerConfig: Layer.Layer<Telemetry, ConfigError.ConfigError, OpenAi> = Layer.unwrapEffect(
    Effect.map(Telemetry.config, Telemetry.layer)
  )
}

/** The `reason` of `aibase_upstream_aborts_total`, by the error code of an interrupted model call. */
const ABORT_REASONS: Readonly<Record<string, string>> = {
  cancelled: "cancel",
  client_disconnected: "disconnect",
  shutting_down: "shutdown"
}

/**
 * Ends a recorded request: its outcome, its ledger row, then its metrics,
 * log line and spans. The one place every transport finishes a record.
 */
export const finishRecord = (ledger: Ledger["Type"], telemetry: TelemetryShape) =>
(record: RequestRecord, exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> => {
  record.finish(exit)
  ledger.finish(record, exit)
  return telemetry.finished(record)
}

const roundMs = (ms: number | null): number | null => ms === null ? null : Math.round(ms * 100) / 100
