/**
 * The console's live time series (GET /console/series): per second of the
 * last few minutes, the requests that finished by status, their time to
 * first token (p50, p95), their tokens, and the connections and requests in
 * flight. A ring of one-second buckets, reused as time moves on: a finished
 * request touches one bucket in O(1), and nothing is kept per request.
 */
import { Context, Effect, Layer, Schedule, Schema, type Scope } from "effect"
import { Hub } from "../hub/Hub.js"
import type { RequestRecord } from "../ledger/RequestRecord.js"

/** What the console charts besides finished requests, sampled from the Hub. */
export interface Gauges {
  readonly connections: number
  readonly inFlight: number
}

export interface ConsoleSeriesOptions {
  /** How far back the series go. Default 5 minutes. */
  readonly minutes?: number | undefined
  /** Epoch milliseconds. Default: the Effect Clock (so tests can use TestClock). */
  readonly now?: (() => number) | undefined
  /** Samples the gauges. Default (in `layer`): the Hub's stats. */
  readonly gauges?: (() => Gauges) | undefined
  /** Time-to-first-token values kept per second for its percentiles (a uniform sample beyond). Default 256. */
  readonly ttftSamplesPerSecond?: number | undefined
}

const Counts = Schema.Array(Schema.Number)
const Gaps = Schema.Array(Schema.NullOr(Schema.Number))

/** Columnar: index i of every array is the second `t[i]`. */
export const ConsoleSnapshot = Schema.Struct({
  /** Epoch seconds, one per second, oldest first, the current (partial) second last. */
  t: Counts,
  /** Finished requests per second by status: `ok` or the error category. */
  requests: Schema.Record({ key: Schema.String, value: Counts }),
  /** The failed ones of `requests`, by error category. */
  errors: Schema.Record({ key: Schema.String, value: Counts }),
  /** Of the streamed completions that finished in that second; null when none had a first token. */
  ttft_p50_ms: Gaps,
  ttft_p95_ms: Gaps,
  tokens_in: Counts,
  tokens_out: Counts,
  /** Open connections (/ws and /rpc); null for a second nobody sampled. */
  connections: Gaps,
  in_flight: Gaps
})
export type ConsoleSnapshot = typeof ConsoleSnapshot.Type

export interface ConsoleSeriesShape {
  /** Counts a finished request (call it after `record.finish`). Synchronous and O(1). */
  readonly onFinished: (record: RequestRecord) => void
  /** The last `seconds` (default: all the minutes kept), up to the current second. */
  readonly snapshot: (seconds?: number) => ConsoleSnapshot
}

/** Distinct statuses kept apart; later ones (which the protocol's categories never reach) count as `other`. */
const MAX_STATUSES = 32

class Bucket {
  /** The epoch second it holds; -1 when unused. */
  second = -1
  readonly requests = new Map<string, number>()
  /** A uniform sample of the second's time-to-first-token values (reservoir sampling). */
  readonly ttft: Array<number> = []
  ttftSeen = 0
  tokensIn = 0
  tokensOut = 0
  connections: number | null = null
  inFlight: number | null = null
  /** Percentiles of `ttft`, computed on demand and kept until it changes. */
  p50: number | null = null
  p95: number | null = null
  percentilesStale = false

  reset(second: number): void {
    this.second = second
    this.requests.clear()
    this.ttft.length = 0
    this.ttftSeen = 0
    this.tokensIn = 0
    this.tokensOut = 0
    this.connections = null
    this.inFlight = null
    this.p50 = null
    this.p95 = null
    this.percentilesStale = false
  }

  percentiles(): void {
    if (!this.percentilesStale) return
    this.percentilesStale = false
    const sorted = [...this.ttft].sort((a, b) => a - b)
    this.p50 = percentile(sorted, 0.5)
    this.p95 = percentile(sorted, 0.95)
  }
}

/** Linear interpolation between closest ranks, as `percentile_cont` does (what /usage reports). */
const percentile = (sorted: ReadonlyArray<number>, p: number): number | null => {
  if (sorted.length === 0) return null
  const rank = (sorted.length - 1) * p
  const low = Math.floor(rank)
  const lower = sorted[low] ?? 0
  const upper = sorted[Math.min(low + 1, sorted.length - 1)] ?? lower
  return Math.round((lower + (upper - lower) * (rank - low)) * 10) / 10
}

/** The series over a clock and a gauge sampler, without the sampling fiber (see `ConsoleSeries.make`). */
export const unsafeMake = (options: {
  readonly minutes?: number | undefined
  readonly now: () => number
  readonly gauges: () => Gauges
  readonly ttftSamplesPerSecond?: number | undefined
}): ConsoleSeriesShape & { readonly sampleGauges: () => void } => {
  const size = Math.max(1, Math.round((options.minutes ?? 5) * 60))
  const maxSamples = Math.max(1, options.ttftSamplesPerSecond ?? 256)
  const ring = Array.from({ length: size }, () => new Bucket())
  const statuses = new Set<string>()
  const now = options.now

  const currentSecond = () => Math.floor(now() / 1000)
  const bucketAt = (second: number): Bucket => {
    const bucket = ring[second % size] ?? new Bucket()
    if (bucket.second !== second) bucket.reset(second)
    return bucket
  }

  const statusOf = (status: string): string => {
    if (statuses.has(status)) return status
    if (statuses.size >= MAX_STATUSES) return "other"
    statuses.add(status)
    return status
  }

  const onFinished = (record: RequestRecord): void => {
    const outcome = record.outcome
    if (outcome === undefined) return
    const bucket = bucketAt(currentSecond())
    const status = statusOf(outcome.status)
    bucket.requests.set(status, (bucket.requests.get(status) ?? 0) + 1)
    if (record.inputTokens !== null) bucket.tokensIn += record.inputTokens
    if (record.outputTokens !== null) bucket.tokensOut += record.outputTokens
    const ttft = record.timeToFirstTokenMs
    if (ttft !== null) {
      bucket.ttftSeen++
      if (bucket.ttft.length < maxSamples) {
        bucket.ttft.push(ttft)
        bucket.percentilesStale = true
      } else {
        // Keeps every value seen this second with the same probability.
        const slot = Math.floor(Math.random() * bucket.ttftSeen)
        if (slot < maxSamples) {
          bucket.ttft[slot] = ttft
          bucket.percentilesStale = true
        }
      }
    }
  }

  const sampleGauges = (): void => {
    const bucket = bucketAt(currentSecond())
    const gauges = options.gauges()
    bucket.connections = gauges.connections
    bucket.inFlight = gauges.inFlight
  }

  const snapshot = (seconds?: number): ConsoleSnapshot => {
    sampleGauges()
    const count = Math.min(size, Math.max(1, Math.floor(seconds ?? size)))
    const last = currentSecond()
    const first = last - count + 1
    const t: Array<number> = []
    const ttftP50: Array<number | null> = []
    const ttftP95: Array<number | null> = []
    const tokensIn: Array<number> = []
    const tokensOut: Array<number> = []
    const connections: Array<number | null> = []
    const inFlight: Array<number | null> = []
    const requests = new Map<string, Array<number>>([["ok", new Array<number>(count).fill(0)]])
    for (let i = 0; i < count; i++) {
      const second = first + i
      t.push(second)
      const bucket = ring[second % size]
      if (bucket === undefined || bucket.second !== second) {
        ttftP50.push(null)
        ttftP95.push(null)
        tokensIn.push(0)
        tokensOut.push(0)
        connections.push(null)
        inFlight.push(null)
        continue
      }
      bucket.percentiles()
      ttftP50.push(bucket.p50)
      ttftP95.push(bucket.p95)
      tokensIn.push(bucket.tokensIn)
      tokensOut.push(bucket.tokensOut)
      connections.push(bucket.connections)
      inFlight.push(bucket.inFlight)
      for (const [status, n] of bucket.requests) {
        let column = requests.get(status)
        if (column === undefined) {
          column = new Array<number>(count).fill(0)
          requests.set(status, column)
        }
        column[i] = n
      }
    }
    // `ok` first, then the categories by name, so the charts' colours stay put.
    const names = [...requests.keys()].filter((name) => name !== "ok").sort()
    const byStatus: Record<string, ReadonlyArray<number>> = {}
    const errors: Record<string, ReadonlyArray<number>> = {}
    byStatus["ok"] = requests.get("ok") ?? []
    for (const name of names) {
      const column = requests.get(name) ?? []
      byStatus[name] = column
      errors[name] = column
    }
    return {
      t,
      requests: byStatus,
      errors,
      ttft_p50_ms: ttftP50,
      ttft_p95_ms: ttftP95,
      tokens_in: tokensIn,
      tokens_out: tokensOut,
      connections,
      in_flight: inFlight
    }
  }

  return { onFinished, snapshot, sampleGauges }
}

export class ConsoleSeries extends Context.Tag("aibase/ConsoleSeries")<ConsoleSeries, ConsoleSeriesShape>() {
  /**
   * The series, with a fiber that samples the gauges twice a second for the
   * life of the scope (so the connection chart has no holes while idle).
   */
  static readonly make = (
    options: ConsoleSeriesOptions & { readonly gauges: () => Gauges }
  ): Effect.Effect<ConsoleSeriesShape, never, Scope.Scope> =>
    Effect.gen(function*() {
      const clock = yield* Effect.clock
      const series = unsafeMake({
        minutes: options.minutes,
        now: options.now ?? (() => clock.unsafeCurrentTimeMillis()),
        gauges: options.gauges,
        ttftSamplesPerSecond: options.ttftSamplesPerSecond
      })
      // Twice a second, so that no second is skipped when a tick lands near its edge.
      yield* Effect.forkScoped(Effect.repeat(Effect.sync(series.sampleGauges), Schedule.fixed("500 millis")))
      return ConsoleSeries.of({ onFinished: series.onFinished, snapshot: series.snapshot })
    })

  /** The series, sampling the Hub's connections and requests in flight unless `options.gauges` says otherwise. */
  static readonly layer = (options: ConsoleSeriesOptions = {}): Layer.Layer<ConsoleSeries, never, Hub> =>
    Layer.scoped(
      ConsoleSeries,
      Effect.gen(function*() {
        const hub = yield* Hub
        const gauges = options.gauges ?? (() => {
          const stats = hub.unsafeStats()
          return { connections: stats.clients, inFlight: stats.inFlight }
        })
        return yield* ConsoleSeries.make({ ...options, gauges })
      })
    )
}
