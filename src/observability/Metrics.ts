/**
 * AIBase's metrics, as Effect `Metric`s: the OpenTelemetry GenAI semantic
 * conventions' instruments where they name the thing, `aibase_` ones
 * elsewhere. `Prometheus` serves them at /metrics.
 *
 * They are updated synchronously from code that already runs once per
 * request (never per chunk), through `Labelled`, which keeps one label array
 * per label set: Effect caches a metric's hook by the identity of that
 * array, so an update is a map lookup and an add, not a registry lookup.
 */
import { Metric, MetricBoundaries, MetricLabel } from "effect"

/**
 * The unit of each metric that has one, in Prometheus' words: the
 * OpenTelemetry-named ones get it as their name's suffix (`s` becomes
 * `_seconds`). Effect's metrics carry no unit of their own.
 */
export const UNITS: ReadonlyMap<string, string> = new Map([
  ["gen_ai.client.operation.duration", "seconds"],
  ["gen_ai.client.operation.time_to_first_chunk", "seconds"],
  ["aibase_tool_duration_seconds", "seconds"]
])

// Bucket boundaries advised by the GenAI semantic conventions.
const durationBoundaries = MetricBoundaries.fromIterable([
  0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
])
const tokenBoundaries = MetricBoundaries.fromIterable([
  1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864
])
const firstChunkBoundaries = MetricBoundaries.fromIterable([
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10
])
const toolBoundaries = MetricBoundaries.fromIterable([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30])

export const connections = Metric.gauge("aibase_connections", {
  description: "Open client connections, by transport (ws or rpc)"
})

// A counter that is not incremental goes up and down (an OpenTelemetry UpDownCounter: a Prometheus gauge).
export const requestsInFlight = Metric.counter("aibase_requests_in_flight", {
  description: "Requests running now, by type"
})

export const requests = Metric.counter("aibase_requests_total", {
  description: "Finished requests, by type, transport and status (ok or the error category)",
  incremental: true
})

export const operationDuration = Metric.histogram(
  "gen_ai.client.operation.duration",
  durationBoundaries,
  "Duration of GenAI operations (chat, embeddings), in seconds"
)

export const tokenUsage = Metric.histogram(
  "gen_ai.client.token.usage",
  tokenBoundaries,
  "Tokens used per GenAI operation, by gen_ai.token.type (input or output)"
)

export const timeToFirstChunk = Metric.histogram(
  "gen_ai.client.operation.time_to_first_chunk",
  firstChunkBoundaries,
  "Time from the request to the first content chunk of a streamed completion, in seconds"
)

export const toolExecutions = Metric.counter("aibase_tool_executions_total", {
  description: "Tool executions, by tool and status (ok or error)",
  incremental: true
})

export const toolDuration = Metric.histogram(
  "aibase_tool_duration_seconds",
  toolBoundaries,
  "Duration of tool executions, in seconds"
)

export const upstreamAborts = Metric.counter("aibase_upstream_aborts_total", {
  description: "Model requests stopped while running, by reason (cancel, disconnect or shutdown)",
  incremental: true
})

export const connectionsRefused = Metric.counter("aibase_connections_refused_total", {
  description: "Connections refused, by reason",
  incremental: true
})

export const framesRejected = Metric.counter("aibase_frames_rejected_total", {
  description: "Client frames rejected before they became requests, by error code",
  incremental: true
})

/** Label arrays by key, each made once (its identity is what Effect caches a metric's hook by). */
export class Labelled {
  private readonly sets = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()

  get(key: string, make: () => ReadonlyArray<readonly [string, string]>): ReadonlyArray<MetricLabel.MetricLabel> {
    let labels = this.sets.get(key)
    if (labels === undefined) {
      labels = make().map(([name, value]) => MetricLabel.make(name, value))
      this.sets.set(key, labels)
    }
    return labels
  }
}

/**
 * Label values that come from clients (model and tool names): the first
 * `limit` distinct ones are kept, later ones become `other`, so that no
 * client can create unbounded series.
 */
export class BoundedValues {
  private readonly seen = new Set<string>()

  constructor(private readonly limit: number) {}

  of(value: string): string {
    if (this.seen.has(value)) return value
    if (this.seen.size >= this.limit) return "other"
    this.seen.add(value)
    return value
  }
}
