/**
 * The metrics in Prometheus' text format. Effect's metrics reach an
 * OpenTelemetry `PrometheusExporter` (without its own HTTP server) through
 * @effect/opentelemetry's metric producer; a scrape collects them and
 * serializes them with the exporter's serializer, after giving
 * OpenTelemetry-named instruments their Prometheus unit suffix.
 */
import * as OtelMetrics from "@effect/opentelemetry/Metrics"
import * as OtelResource from "@effect/opentelemetry/Resource"
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus"
import type { ResourceMetrics } from "@opentelemetry/sdk-metrics"
import { Config, type ConfigError, Context, Effect, Layer } from "effect"
import { UNITS } from "./Metrics.js"

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

export interface PrometheusOptions {
  /** The `service.name` of the target_info series. Default `aibase`. */
  readonly serviceName?: string | undefined
}

export class Prometheus extends Context.Tag("aibase/Prometheus")<Prometheus, {
  /** Every metric, in the Prometheus text exposition format. */
  readonly scrape: Effect.Effect<string>
}>() {
  static readonly make = Effect.gen(function*() {
    const exporter = new PrometheusExporter({ preventServerStart: true })
    yield* OtelMetrics.registerProducer(yield* OtelMetrics.makeProducer, () => exporter)
    // Without the otel_scope_name label on every series: there is one scope.
    const serializer = new PrometheusSerializer(undefined, false, undefined, false, true)
    const scrape = Effect.promise(() => exporter.collect()).pipe(
      Effect.tap(({ errors }) =>
        errors.length === 0 ? Effect.void : Effect.logWarning("Collecting metrics reported errors", errors)
      ),
      Effect.map(({ resourceMetrics }) => serializer.serialize(withUnitSuffixes(resourceMetrics)))
    )
    return Prometheus.of({ scrape })
  })

  static readonly layer = (options: PrometheusOptions = {}): Layer.Layer<Prometheus> =>
    Layer.scoped(Prometheus, Prometheus.make).pipe(
      Layer.provide(OtelResource.layer({ serviceName: options.serviceName ?? "aibase" }))
    )

  /** OTEL_SERVICE_NAME. */
  static readonly layerConfig: Layer.Layer<Prometheus, ConfigError.ConfigError> = Layer.unwrapEffect(
    Effect.map(
      Config.nonEmptyString("OTEL_SERVICE_NAME").pipe(Config.withDefault("aibase")),
      (serviceName) => Prometheus.layer({ serviceName })
    )
  )
}

/**
 * `gen_ai.client.operation.duration` is scraped as
 * `gen_ai_client_operation_duration_seconds`, with `# UNIT ... seconds`; a
 * metric without a unit gets no UNIT line (the producer's default, `1`, says nothing).
 */
const withUnitSuffixes = (metrics: ResourceMetrics): ResourceMetrics => ({
  ...metrics,
  scopeMetrics: metrics.scopeMetrics.map((scope) => ({
    ...scope,
    metrics: scope.metrics.map((metric) => {
      const name = metric.descriptor.name
      const unit = UNITS.get(name) ?? ""
      const suffixed = unit === "" || name.endsWith(`_${unit}`) ? name : `${name}_${unit}`
      return { ...metric, descriptor: { ...metric.descriptor, name: suffixed, unit } }
    })
  }))
})
