/**
 * The console's time series: finished requests land in their second's
 * bucket, the window slides with the clock (TestClock), buckets are reused
 * when the ring wraps, and the gauges are sampled while idle.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, FiberId, Schema, TestClock } from "effect"
import { inProcess, RequestRecord } from "../../src/ledger/RequestRecord.js"
import { ConsoleSeries, ConsoleSnapshot, type Gauges, unsafeMake } from "../../src/observability/ConsoleSeries.js"
import { RateLimitError, ValidationError } from "../../src/protocol/Errors.js"

interface Finished {
  readonly type?: string
  readonly exit?: Exit.Exit<unknown, unknown>
  readonly ttftMs?: number
  readonly inputTokens?: number
  readonly outputTokens?: number
}

let nextId = 0

/** A record as a transport finishes it. */
const finished = (options: Finished = {}): RequestRecord => {
  const record = new RequestRecord(`r${++nextId}`, options.type ?? "chat_completion_stream", inProcess, false, 0, 0)
  if (options.ttftMs !== undefined) record.firstTokenAt = options.ttftMs
  if (options.inputTokens !== undefined) record.inputTokens = options.inputTokens
  if (options.outputTokens !== undefined) record.outputTokens = options.outputTokens
  record.finish(options.exit ?? Exit.void)
  return record
}

const rateLimited = Exit.fail(new RateLimitError({ code: "rate_limited", message: "slow down" }))
const invalid = Exit.fail(new ValidationError({ code: "invalid_payload", message: "no messages" }))

/** A series on a hand-driven clock. */
const manual = (minutes = 1) => {
  let now = 1_000_000_000_000
  let gauges: Gauges = { connections: 0, inFlight: 0 }
  const series = unsafeMake({ minutes, now: () => now, gauges: () => gauges })
  return {
    series,
    advance: (ms: number) => {
      now += ms
    },
    setGauges: (next: Gauges) => {
      gauges = next
    },
    second: () => Math.floor(now / 1000)
  }
}

describe("ConsoleSeries", () => {
  it("counts requests by status, errors by category, tokens and TTFT percentiles per second", () => {
    const { advance, second, series } = manual()
    for (let i = 1; i <= 10; i++) series.onFinished(finished({ ttftMs: i * 10, inputTokens: 5, outputTokens: 7 }))
    series.onFinished(finished({ exit: rateLimited }))
    series.onFinished(finished({ type: "embedding", inputTokens: 3 }))
    advance(1000)
    series.onFinished(finished({ exit: invalid }))
    series.onFinished(finished({ exit: Exit.interrupt(FiberId.none) }))

    const snapshot = series.snapshot(3)
    expect(snapshot.t).toEqual([second() - 2, second() - 1, second()])
    expect(snapshot.requests).toEqual({
      ok: [0, 11, 0],
      cancelled: [0, 0, 1],
      rate_limit: [0, 1, 0],
      validation: [0, 0, 1]
    })
    expect(snapshot.errors).toEqual({ cancelled: [0, 0, 1], rate_limit: [0, 1, 0], validation: [0, 0, 1] })
    expect(snapshot.tokens_in).toEqual([0, 53, 0])
    expect(snapshot.tokens_out).toEqual([0, 70, 0])
    // 10..100 ms: p50 between 50 and 60, p95 between 90 and 100 (linear interpolation).
    expect(snapshot.ttft_p50_ms).toEqual([null, 55, null])
    expect(snapshot.ttft_p95_ms).toEqual([null, 95.5, null])
    // The snapshot is what the route encodes.
    expect(Schema.decodeUnknownSync(ConsoleSnapshot)(Schema.encodeSync(ConsoleSnapshot)(snapshot))).toEqual(snapshot)
  })

  it("slides the window and reuses buckets when the ring wraps", () => {
    const { advance, series } = manual(1)
    series.onFinished(finished({ outputTokens: 4 }))
    expect(series.snapshot().t).toHaveLength(60)
    expect(series.snapshot().tokens_out.at(-1)).toBe(4)
    advance(30_000)
    expect(series.snapshot().tokens_out.at(-31)).toBe(4)
    // 60 seconds later the same bucket holds a new second: the old counts are gone.
    advance(30_000)
    series.onFinished(finished({ outputTokens: 1 }))
    const snapshot = series.snapshot()
    expect(snapshot.tokens_out.reduce((a, b) => a + b, 0)).toBe(1)
    expect(snapshot.requests["ok"]?.reduce((a, b) => a + b, 0)).toBe(1)
    // A request long gone does not come back when its slot is read without being written.
    advance(60_000)
    expect(series.snapshot().requests).toEqual({ ok: new Array(60).fill(0) })
  })

  it("keeps at most the configured TTFT values per second, as a sample", () => {
    let now = 5_000
    const series = unsafeMake({
      now: () => now,
      gauges: () => ({ connections: 0, inFlight: 0 }),
      ttftSamplesPerSecond: 8
    })
    for (let i = 0; i < 1000; i++) series.onFinished(finished({ ttftMs: i < 500 ? 100 : 300 }))
    const [p50] = series.snapshot(1).ttft_p50_ms
    // Every kept value is one that was seen.
    expect([100, 200, 300]).toContain(p50)
    now += 1000
    expect(series.snapshot(2).requests["ok"]).toEqual([1000, 0])
  })

  it("samples the gauges at snapshot time; unsampled seconds are null", () => {
    const { advance, series, setGauges } = manual()
    setGauges({ connections: 3, inFlight: 1 })
    series.snapshot()
    advance(2000)
    setGauges({ connections: 5, inFlight: 2 })
    const snapshot = series.snapshot(3)
    expect(snapshot.connections).toEqual([3, null, 5])
    expect(snapshot.in_flight).toEqual([1, null, 2])
  })

  it("ignores a record that has not finished", () => {
    const { series } = manual()
    series.onFinished(new RequestRecord("x", "chat_completion", inProcess, false))
    expect(series.snapshot(1).requests).toEqual({ ok: [0] })
  })

  it.scoped("samples the gauges every second while idle, on the Effect clock", () =>
    Effect.gen(function*() {
      let connections = 1
      const series = yield* ConsoleSeries.make({ gauges: () => ({ connections, inFlight: 0 }) })
      yield* TestClock.adjust(Duration.seconds(1))
      connections = 2
      yield* TestClock.adjust(Duration.seconds(1))
      connections = 4
      yield* TestClock.adjust(Duration.seconds(1))
      series.onFinished(finished({ inputTokens: 9 }))
      // TestClock starts at 0: seconds 0 to 3 are the last four of the window.
      const snapshot = series.snapshot(4)
      expect(snapshot.t).toEqual([0, 1, 2, 3])
      expect(snapshot.connections).toEqual([1, 2, 4, 4])
      expect(snapshot.tokens_in).toEqual([0, 0, 0, 9])
    }))
})
