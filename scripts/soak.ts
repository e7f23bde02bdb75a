/**
 * `npm run soak`: AIBase under mixed traffic for a while, watched for leaks
 * and lost requests. Not part of `npm test`.
 *
 *   npm run soak                        # 5 minutes, 50 clients
 *   npm run soak -- --seconds 90        # a short run
 *   npm run soak -- --minutes 30 --clients 100 --seed 42
 *
 * Processes (all on 127.0.0.1): the fake OpenAI upstream (bench/FakeUpstream.ts)
 * and AIBase (`node --import tsx src/main.ts`, LLM_PROVIDER=openai pointed at
 * the fake upstream) as children; this process is the clients.
 *
 * Traffic: `--clients` connections at a time, each running a random sequence
 * of operations one after the other, then closing and reconnecting: streams,
 * streams cancelled mid-way, streams abandoned by an abrupt disconnect, pings,
 * bursts of pipelined pings, embeddings, chat completions, tool calls, and
 * bad frames (invalid JSON, an unknown type, 3,000-level nesting at the top and
 * inside a message, binary frames).
 *
 * Watched: the server's RSS (/proc/PID/status) and its responsiveness (the
 * latency of a GET /health round-trip, which is what the event loop's delay
 * looks like from outside) every `--sample-seconds`.
 *
 * Fails (exit code 1, one `FAIL:` line per reason) when
 * - a request that was not cancelled or abandoned by a disconnect ends
 *   without its final frame within `--deadline-seconds` (or its connection is
 *   closed under it), or a frame arrives after its request's final frame;
 * - memory keeps growing after the first minute: the floor of RSS's GC
 *   sawtooth (each minute's minimum) jumps by more than `--max-growth` MiB
 *   (judged from a 3-minute run) or still climbs by more than `--max-slope`
 *   MiB/min in the later half of the run (judged from an 8-minute run); see
 *   `memoryVerdict` for the measurements behind the rule. `--seconds 90` is
 *   too short for either and says so;
 * - /health does not answer within 10 s, or the server dies;
 * - once the clients are gone, /health does not come back to 0 clients and
 *   0 requests in flight (leaked connection or request slots);
 * - the server does not exit cleanly on SIGTERM.
 *
 * Every loop is bounded in time, every wait has a deadline.
 */
import { writeFileSync } from "node:fs"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { Conn, type Frame, summarize } from "../bench/Load.js"
import { freePort, httpGet, type Proc, rssKiB, spawnNode, stop } from "../bench/Processes.js"
import { isFinalFrame } from "../src/protocol/Frames.js"
import { mulberry32 } from "../src/util/Prng.js"

// ---------------------------------------------------------------------------
// options

interface Options {
  readonly durationMs: number
  readonly clients: number
  readonly sampleMs: number
  readonly deadlineMs: number
  readonly warmupMs: number
  /** The window whose minimum is the RSS floor (see memoryVerdict). */
  readonly floorMs: number
  /** MiB per minute after warm-up (see memoryVerdict). */
  readonly maxSlope: number
  /** MiB above the post-warm-up minimum. */
  readonly maxGrowth: number
  readonly seed: number
  readonly thinkMs: number
  /** Where to write the samples as JSON (optional). */
  readonly samplesOut: string | undefined
}

const usage = (message?: string): never => {
  if (message !== undefined) console.error(message)
  console.error(
    "usage: npm run soak -- [--minutes N | --seconds N] [--clients N] [--sample-seconds N] [--deadline-seconds N]\n" +
      "                       [--warmup-seconds N] [--floor-seconds N] [--max-slope MiB/min] [--max-growth MiB] [--think-ms N] [--seed N]\n" +
      "                       [--samples-out FILE]"
  )
  process.exit(2)
}

const parseOptions = (argv: ReadonlyArray<string>): Options => {
  const values = new Map<string, number>()
  let samplesOut: string | undefined
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? ""
    if (arg === "--help" || arg === "-h") usage()
    if (!arg.startsWith("--")) usage(`unexpected argument ${arg}`)
    const [flag, inline] = arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, argv[++i]]
    if (flag === "--samples-out") {
      if (inline === undefined || inline === "") usage("--samples-out needs a file name")
      samplesOut = inline
      continue
    }
    const value = Number(inline)
    if (inline === undefined || inline === "" || !Number.isFinite(value) || value < 0) usage(`${flag} needs a non-negative number`)
    values.set(flag, value)
  }
  const known = new Set([
    "--minutes",
    "--seconds",
    "--clients",
    "--sample-seconds",
    "--deadline-seconds",
    "--warmup-seconds",
    "--floor-seconds",
    "--max-slope",
    "--max-growth",
    "--seed",
    "--think-ms"
  ])
  for (const flag of values.keys()) if (!known.has(flag)) usage(`unknown option ${flag}`)
  const seconds = values.get("--seconds") ?? (values.get("--minutes") ?? 5) * 60
  if (seconds <= 0) usage("the run needs a positive duration")
  return {
    durationMs: seconds * 1_000,
    clients: Math.max(1, Math.floor(values.get("--clients") ?? 50)),
    sampleMs: Math.max(0.5, values.get("--sample-seconds") ?? 2) * 1_000,
    deadlineMs: Math.max(1, values.get("--deadline-seconds") ?? 30) * 1_000,
    warmupMs: (values.get("--warmup-seconds") ?? 60) * 1_000,
    floorMs: Math.max(1, values.get("--floor-seconds") ?? 60) * 1_000,
    maxSlope: values.get("--max-slope") ?? 1,
    maxGrowth: values.get("--max-growth") ?? 100,
    seed: Math.floor(values.get("--seed") ?? Date.now() % 1_000_000),
    thinkMs: values.get("--think-ms") ?? 30,
    samplesOut
  }
}

// ---------------------------------------------------------------------------
// small helpers

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))


const quantile = (sorted: ReadonlyArray<number>, q: number): number => {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? Number.NaN
}

const median = (values: ReadonlyArray<number>): number => quantile([...values].sort((a, b) => a - b), 0.5)

const mib = (kib: number): string => (kib / 1024).toFixed(1)
const ms = (value: number): string => (Number.isFinite(value) ? value.toFixed(1) : "n/a")

const field = (text: string, name: string): string => {
  const key = `"${name}":"`
  const at = text.indexOf(key)
  if (at === -1) return ""
  const end = text.indexOf("\"", at + key.length)
  return end === -1 ? "" : text.slice(at + key.length, end)
}

// ---------------------------------------------------------------------------
// memory verdict

interface Sample {
  /** Since the traffic started. */
  readonly atMs: number
  readonly rssKiB: number
}

interface MemoryVerdict {
  readonly failures: ReadonlyArray<string>
  readonly lines: ReadonlyArray<string>
  /** What the run was long enough to judge. */
  readonly judged: "nothing" | "jumps" | "jumps and trend"
}

/** The Theil–Sen slope of points (the median of the slopes between every pair), robust to outliers. */
const theilSen = (points: ReadonlyArray<{ readonly x: number; readonly y: number }>): number => {
  const slopes: Array<number> = []
  for (let i = 0; i < points.length; i++) {
    for (let j = i + 1; j < points.length; j++) {
      const a = points[i]
      const b = points[j]
      if (a !== undefined && b !== undefined && b.x !== a.x) slopes.push((b.y - a.y) / (b.x - a.x))
    }
  }
  return median(slopes)
}

/**
 * Whether RSS keeps growing after warm-up.
 *
 * What RSS looks like here (measured, 50 clients of this mix, 2 s samples):
 * - a sawtooth: RSS climbs at ~150 MiB/min for 10–25 s, drops by 50–70 MiB
 *   when V8 collects and releases pages, then sits flat at a floor for
 *   20–30 s (a cycle of ~45 s). A single sample, the last one, a peak or a
 *   straight line through all samples mostly measures where in its cycle
 *   the heap happens to be: a 30 s window can be one rising edge
 *   (+90 MiB/min) with nothing leaking. What a leak raises is the floor, the
 *   memory still held right after collections;
 * - the floor settles for minutes: 296 → 318 → 347 → 352 MiB over minutes
 *   1–5 of one 10-minute run, then flat (352–359, 340) to the end; 353 → 364
 *   → 369 → 366 in a 5-minute run. Idle moments do not help: RSS stays put
 *   for 30 s after the load stops, at whatever the cycle had reached.
 *
 * So the samples after the first `warmupMs` are cut into windows of
 * `floorMs` (default 60 s, longer than one cycle), aligned to the end of the
 * run, and each window's minimum is its floor. Then:
 *
 * - "keeps growing" (needs 4 floors in the later half of the run, i.e.
 *   7 windows: a run of warm-up + 7 × `floorMs`, 8 minutes by default): the
 *   floors' Theil–Sen slope is above `maxSlope` MiB/min over the whole run
 *   after warm-up AND over its later half, AND the later half's slope adds up
 *   to more than 12 MiB over that half (3× the ±4 MiB the floor wanders by
 *   with nothing leaking; the real 10-minute run crept by up to 7.8 MiB over
 *   minutes 5–9 and then dropped). Judging the later half is what lets a process that
 *   settled higher and then stayed put pass, and one that still climbs at
 *   the end fail. On synthetic sawtooth series with this noise, a 10-minute
 *   run catches a leak of 4 MiB/min, a 30-minute run 1.5 MiB/min; the real
 *   10-minute run above passes with 1.7 MiB over its later half;
 * - "jumped" (needs 2 floors, a run of 3 minutes by default): the last
 *   floor is more than `maxGrowth` MiB above the lowest floor after warm-up
 *   (default 100 MiB, 1.6× the most settling measured, 63 MiB).
 *
 * A run with fewer than two whole windows after warm-up (such as
 * `--seconds 90`) is too short to tell a leak from the sawtooth: its memory
 * is reported, not judged. The default 5 minutes judges jumps only; use
 * `--minutes 10` or more for a verdict on slow leaks.
 */
export const memoryVerdict = (
  samples: ReadonlyArray<Sample>,
  options: Pick<Options, "warmupMs" | "floorMs" | "maxSlope" | "maxGrowth">
): MemoryVerdict => {
  const post = samples.filter((sample) => sample.atMs >= options.warmupMs && Number.isFinite(sample.rssKiB))
  const lines: Array<string> = []
  const failures: Array<string> = []
  const last = post[post.length - 1]
  if (last === undefined) {
    return { failures, lines: ["memory not judged: no samples after the warm-up"], judged: "nothing" }
  }
  const floors: Array<{ readonly x: number; readonly y: number }> = []
  // Windows (to - floorMs, to], from the end back; a window may start a little before the warm-up ends (sampling drift).
  for (let to = last.atMs; to - options.floorMs >= options.warmupMs - options.floorMs / 10; to -= options.floorMs) {
    const inWindow = post.filter((sample) => sample.atMs > to - options.floorMs && sample.atMs <= to)
    if (inWindow.length === 0) break
    floors.unshift({ x: (to - options.floorMs / 2) / 60_000, y: Math.min(...inWindow.map((sample) => sample.rssKiB)) / 1024 })
  }
  const postMiB = post.map((sample) => sample.rssKiB / 1024)
  const range = `after warm-up: min ${Math.min(...postMiB).toFixed(1)}, max ${Math.max(...postMiB).toFixed(1)} MiB over ${
    ((last.atMs - (post[0]?.atMs ?? last.atMs)) / 1000).toFixed(0)
  } s`
  const window = `${options.floorMs / 1000} s`
  if (floors.length < 2) {
    lines.push(
      `${range}; memory not judged: needs 2 whole ${window} windows after the ${options.warmupMs / 1000} s warm-up ` +
        `(a run of at least ${(options.warmupMs + 2 * options.floorMs) / 1000} s) to tell a leak from the GC sawtooth`
    )
    return { failures, lines, judged: "nothing" }
  }
  const lastFloor = floors[floors.length - 1]?.y ?? Number.NaN
  const rise = lastFloor - Math.min(...floors.map((floor) => floor.y))
  lines.push(`${range}; floors (min of each ${window} window): ${floors.map((floor) => floor.y.toFixed(0)).join(", ")} MiB`)
  if (rise > options.maxGrowth) {
    failures.push(`the RSS floor ended ${rise.toFixed(1)} MiB above its lowest level after warm-up (limit ${options.maxGrowth} MiB)`)
  }
  const later = floors.slice(Math.floor(floors.length / 2))
  if (later.length < 4) {
    lines.push(
      `last floor ${rise.toFixed(1)} MiB above the lowest (limit ${options.maxGrowth}); no trend verdict: needs 4 floors in the ` +
        `later half (a run of at least ${(options.warmupMs + 7 * options.floorMs) / 60_000} minutes)`
    )
    return { failures, lines, judged: "jumps" }
  }
  const slope = theilSen(floors)
  const lateSlope = theilSen(later)
  const lateGrowth = lateSlope * ((later[later.length - 1]?.x ?? 0) - (later[0]?.x ?? 0))
  lines.push(
    `floor trend ${slope >= 0 ? "+" : ""}${slope.toFixed(2)} MiB/min, later half ${lateSlope >= 0 ? "+" : ""}${lateSlope.toFixed(2)} ` +
      `MiB/min (Theil–Sen; limit ${options.maxSlope}), ${lateGrowth.toFixed(1)} MiB over the later half (limit 12); ` +
      `last floor ${rise.toFixed(1)} MiB above the lowest (limit ${options.maxGrowth})`
  )
  if (slope > options.maxSlope && lateSlope > options.maxSlope && lateGrowth > 12) {
    failures.push(
      `RSS keeps growing after warm-up: its floor rises ${slope.toFixed(2)} MiB/min, ${lateSlope.toFixed(2)} MiB/min in the later half ` +
        `(${lateGrowth.toFixed(1)} MiB; limit ${options.maxSlope} MiB/min)`
    )
  }
  return { failures, lines, judged: "jumps and trend" }
}

// ---------------------------------------------------------------------------
// the run

const options = parseOptions(process.argv.slice(2))
// Seeded, so a run's traffic can be replayed with --seed.
const random = mulberry32(options.seed)
const pick = <A>(items: ReadonlyArray<readonly [A, number]>): A => {
  const total = items.reduce((sum, [, weight]) => sum + weight, 0)
  let x = random() * total
  for (const [item, weight] of items) {
    x -= weight
    if (x < 0) return item
  }
  return items[items.length - 1]![0]
}
const between = (min: number, max: number) => min + Math.floor(random() * (max - min + 1))

/** Requests by type, then outcome. */
const outcomes = new Map<string, Map<string, number>>()
const record = (type: string, outcome: string) => {
  let byOutcome = outcomes.get(type)
  if (byOutcome === undefined) outcomes.set(type, byOutcome = new Map())
  byOutcome.set(outcome, (byOutcome.get(outcome) ?? 0) + 1)
}
/** Requests that ended without their final frame (or lost their connection under them). */
const lost: Array<string> = []
let stray = 0

interface Final {
  /** `final`: its final frame came; `closed`: the connection closed first; `missing`: nothing by the deadline. */
  readonly kind: "final" | "closed" | "missing"
  readonly type: string
  readonly code: string
}

/** Waits for the final frame of `id` on `conn` (`""` waits for the next frame without a request_id). */
const awaitFinal = (conn: Conn, id: string, onFrame?: (frame: Frame) => void): Promise<Final> =>
  new Promise((resolve) => {
    const timer = setTimeout(() => {
      conn.off(id)
      resolve({ kind: "missing", type: "", code: "" })
    }, options.deadlineMs)
    conn.on(id, (frame) => {
      if (frame.type === "closed") {
        clearTimeout(timer)
        return resolve({ kind: "closed", type: "", code: "" })
      }
      onFrame?.(frame)
      if (isFinalFrame(frame)) {
        clearTimeout(timer)
        conn.off(id)
        resolve({ kind: "final", type: frame.type, code: frame.type === "error" ? field(frame.text, "code") : "" })
      }
    })
  })

/** Records a request that had to end with its final frame. */
const settle = (type: string, id: string, final: Final, expected: string): void => {
  if (final.kind === "final") {
    record(type, final.type === expected ? "ok" : final.type === "error" ? `error:${final.code}` : `unexpected:${final.type}`)
    return
  }
  record(type, final.kind === "closed" ? "LOST:connection closed" : "LOST:no final frame")
  lost.push(`${type} ${id}: ${final.kind === "closed" ? "the server closed the connection first" : `no final frame within ${options.deadlineMs / 1000} s`}`)
}

/** A stream long enough to be cancelled or abandoned mid-way (about 2 s at the fake upstream). */
const LONG_MODEL = "fake:chunks=200,interval=10,delay=20"
const streamFrame = (id: string, model?: string) => ({
  type: "chat_completion_stream",
  request_id: id,
  payload: { messages: [{ role: "user", content: "Tell me a story" }], ...(model === undefined ? {} : { model }) }
})

const deep = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`

type Op =
  | "stream"
  | "stream+cancel"
  | "stream+disconnect"
  | "ping"
  | "ping burst"
  | "embedding"
  | "completion"
  | "tool_execute"
  | "bad:invalid_json"
  | "bad:unknown_type"
  | "bad:deep"
  | "bad:deep_content"
  | "bad:binary"

const OPS: ReadonlyArray<readonly [Op, number]> = [
  ["stream", 20],
  ["stream+cancel", 8],
  ["stream+disconnect", 5],
  ["ping", 12],
  ["ping burst", 3],
  ["embedding", 10],
  ["completion", 10],
  ["tool_execute", 5],
  ["bad:invalid_json", 2],
  ["bad:unknown_type", 2],
  ["bad:deep", 2],
  ["bad:deep_content", 2],
  ["bad:binary", 2]
]

/** Runs one operation; returns "dropped" when it terminated the connection itself. */
const runOp = async (conn: Conn, op: Op, nextId: () => string): Promise<"ok" | "dropped"> => {
  const id = nextId()
  switch (op) {
    case "stream": {
      const done = awaitFinal(conn, id)
      conn.send(streamFrame(id))
      settle(op, id, await done, "chat_completion_stream_end")
      return "ok"
    }
    case "stream+cancel": {
      let chunks = 0
      let firstChunk: () => void = () => {}
      const started = new Promise<void>((resolve) => (firstChunk = resolve))
      const done = awaitFinal(conn, id, (frame) => {
        if (frame.type === "chat_completion_stream_chunk" && ++chunks === 3) firstChunk()
      })
      conn.send(streamFrame(id, LONG_MODEL))
      // Cancel once it streams (or when it has already ended, which the cancel then reports).
      const first = await Promise.race([started.then(() => "streaming" as const), done.then(() => "ended" as const)])
      const cancelId = nextId()
      const cancelDone = awaitFinal(conn, cancelId)
      conn.send({ type: "cancel", request_id: cancelId, payload: { request_id: id } })
      const [final, cancelFinal] = await Promise.all([done, cancelDone])
      settle("cancel", cancelId, cancelFinal, "cancel_response")
      if (final.kind !== "final") settle(op, id, final, "error")
      else if (final.type === "error" && final.code === "cancelled") record(op, "cancelled")
      else if (final.type === "chat_completion_stream_end") record(op, first === "ended" ? "ended before the cancel" : "ended before the cancel landed")
      else record(op, `error:${final.code}`)
      return "ok"
    }
    case "stream+disconnect": {
      let chunks = 0
      const done = awaitFinal(conn, id, (frame) => {
        if (frame.type === "chat_completion_stream_chunk" && ++chunks === 3) conn.terminate()
      })
      conn.send(streamFrame(id, LONG_MODEL))
      const final = await done
      record(op, final.kind === "closed" ? "disconnected mid-stream" : final.kind === "final" ? `ended first:${final.type}` : "no frames")
      if (final.kind === "missing") lost.push(`${op} ${id}: no frame within ${options.deadlineMs / 1000} s`)
      conn.terminate()
      return "dropped"
    }
    case "ping": {
      const done = awaitFinal(conn, id)
      conn.send({ type: "ping", request_id: id })
      settle(op, id, await done, "pong")
      return "ok"
    }
    case "ping burst": {
      // Pipelined: more than WS_MAX_IN_FLIGHT would be answered `overloaded`, so stay below it.
      const ids = [id, ...Array.from({ length: 15 }, nextId)]
      const done = ids.map((burstId) => awaitFinal(conn, burstId))
      for (const burstId of ids) conn.send({ type: "ping", request_id: burstId })
      const finals = await Promise.all(done)
      finals.forEach((final, index) => settle(op, ids[index] ?? "", final, "pong"))
      return "ok"
    }
    case "embedding": {
      const done = awaitFinal(conn, id)
      conn.send({ type: "embedding", request_id: id, payload: { input: ["The quick brown fox", "jumps over the lazy dog"] } })
      settle(op, id, await done, "embedding_response")
      return "ok"
    }
    case "completion": {
      const done = awaitFinal(conn, id)
      conn.send({ type: "chat_completion", request_id: id, payload: { messages: [{ role: "user", content: "Hello!" }], max_tokens: 50 } })
      settle(op, id, await done, "chat_completion_response")
      return "ok"
    }
    case "tool_execute": {
      const done = awaitFinal(conn, id)
      conn.send({
        type: "tool_execute",
        request_id: id,
        payload: { tool_call: { id: "call_1", type: "function", function: { name: "calculator", arguments: "{\"expression\":\"2+3*4\"}" } } }
      })
      settle(op, id, await done, "tool_execute_response")
      return "ok"
    }
    case "bad:invalid_json": {
      // No request_id can be read: the answer is the next frame without one (operations on a connection run one at a time).
      const done = awaitFinal(conn, "")
      conn.socket.send("{\"type\":\"ping\",\"request_id\":")
      settle(op, "(none)", await done, "error")
      return "ok"
    }
    case "bad:binary": {
      const done = awaitFinal(conn, "")
      conn.socket.send(Buffer.from([0x7b, 0x00, 0xff, 0x7d]), { binary: true })
      settle(op, "(none)", await done, "error")
      return "ok"
    }
    case "bad:unknown_type": {
      const done = awaitFinal(conn, id)
      conn.send({ type: "no_such_request", request_id: id, payload: {} })
      settle(op, id, await done, "error")
      return "ok"
    }
    case "bad:deep": {
      const done = awaitFinal(conn, id)
      conn.socket.send(`{"type":"chat_completion","request_id":"${id}","payload":${deep(3_000)}}`)
      settle(op, id, await done, "error")
      return "ok"
    }
    case "bad:deep_content": {
      const done = awaitFinal(conn, id)
      conn.socket.send(
        `{"type":"chat_completion_stream","request_id":"${id}","payload":{"messages":[{"role":"user","content":${deep(3_000)}}]}}`
      )
      settle(op, id, await done, "error")
      return "ok"
    }
  }
}

const main = async () => {
  const startedAt = Date.now()
  console.log(
    `soak: ${options.durationMs / 1000} s of mixed traffic, ${options.clients} clients, seed ${options.seed}, ` +
      `warm-up ${options.warmupMs / 1000} s, request deadline ${options.deadlineMs / 1000} s`
  )
  let upstream: Proc | undefined
  let server: Proc | undefined
  const failures: Array<string> = []
  let memoryJudged: MemoryVerdict["judged"] = "nothing"
  try {
    upstream = await spawnNode({ name: "fake upstream", script: "bench/FakeUpstream.ts", env: {}, timeoutMs: 60_000 })
    const port = await freePort()
    server = await spawnNode({
      name: "AIBase",
      script: "src/main.ts",
      port,
      timeoutMs: 60_000,
      env: {
        LLM_PROVIDER: "openai",
        OPENAI_API_KEY: "sk-soak",
        OPENAI_BASE_URL: `http://127.0.0.1:${upstream.port}/v1`,
        LOG_LEVEL: "warning",
        LOG_FORMAT: "json",
        SERVER_HOST: "127.0.0.1",
        SERVER_PORT: String(port)
      }
    })
    const aibase = server
    console.log(`AIBase pid ${aibase.pid} on port ${port}; fake upstream on port ${upstream.port}`)
    const wsUrl = `ws://127.0.0.1:${port}/ws`

    // ---- samplers
    const trafficStart = Date.now()
    const endAt = trafficStart + options.durationMs
    const samples: Array<Sample> = []
    const healthLatencies: Array<number> = []
    const healthFailures: Array<string> = []
    let lastHealth = ""
    const sampleOnce = async () => {
      samples.push({ atMs: Date.now() - trafficStart, rssKiB: rssKiB(aibase.pid) })
      const sent = performance.now()
      try {
        const response = await httpGet(port, "/health", 10_000)
        healthLatencies.push(performance.now() - sent)
        lastHealth = response.body
        if (response.status !== 200) healthFailures.push(`HTTP ${response.status}: ${response.body.slice(0, 200)}`)
      } catch (error) {
        healthFailures.push(error instanceof Error ? error.message : String(error))
      }
    }
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        const next = Date.now() + options.sampleMs
        await sampleOnce()
        await sleep(Math.max(0, next - Date.now()))
      }
    })()
    const clientDelay = monitorEventLoopDelay({ resolution: 10 })
    clientDelay.enable()

    // ---- progress
    let requests = 0
    const progress = setInterval(() => {
      const last = samples[samples.length - 1]
      const elapsed = ((Date.now() - trafficStart) / 1000).toFixed(0)
      console.log(
        `  ${elapsed.padStart(5)} s  ${String(requests).padStart(7)} operations  RSS ${last === undefined ? "?" : mib(last.rssKiB)} MiB  ` +
          `/health ${ms(healthLatencies[healthLatencies.length - 1] ?? Number.NaN)} ms ${lastHealth}`
      )
    }, 15_000)

    // ---- clients
    let stopping = false
    const died = aibase.exited.then((code) => {
      if (!stopping) failures.push(`the server exited during the run (${String(code)}):\n${aibase.output().slice(-2_000)}`)
    })
    const client = async (index: number) => {
      let seq = 0
      const nextId = () => `c${index}-${++seq}`
      while (Date.now() < endAt && aibase.alive()) {
        let conn: Conn
        try {
          conn = await Conn.open(wsUrl, 10_000)
        } catch (error) {
          record("connect", `error:${error instanceof Error ? error.message : String(error)}`)
          await sleep(500)
          continue
        }
        record("connect", "ok")
        const count = between(5, 30)
        let dropped = false
        for (let i = 0; i < count && Date.now() < endAt && conn.open; i++) {
          const op = pick(OPS)
          requests++
          if ((await runOp(conn, op, nextId)) === "dropped") {
            dropped = true
            break
          }
          if (options.thinkMs > 0) await sleep(random() * options.thinkMs)
        }
        if (!dropped && conn.open) {
          conn.close()
          const closeBy = Date.now() + 5_000
          while (!conn.closed && Date.now() < closeBy) await sleep(20)
          if (!conn.closed) conn.terminate()
        }
        stray += conn.stray
      }
    }
    await Promise.race([Promise.all(Array.from({ length: options.clients }, (_, index) => client(index))), died])
    clearInterval(progress)
    clientDelay.disable()
    sampling = false
    await sampler
    const trafficMs = Date.now() - trafficStart

    // ---- after the traffic: every slot released?
    let endState = ""
    if (aibase.alive()) {
      const settleBy = Date.now() + 15_000
      for (;;) {
        const health = await httpGet(port, "/health", 5_000).catch(() => undefined)
        endState = health?.body ?? "(no answer)"
        const body = health === undefined ? undefined : JSON.parse(health.body) as { clients?: number; in_flight?: number }
        if (body !== undefined && body.clients === 0 && (body.in_flight ?? 0) === 0) break
        if (Date.now() >= settleBy) {
          failures.push(`15 s after the last client left, /health still reports ${endState}`)
          break
        }
        await sleep(200)
      }
    }
    const rssAfter = rssKiB(aibase.pid)
    stopping = true
    const exitCode = aibase.alive() ? await stop(aibase, 15_000) : await aibase.exited
    if (exitCode !== 0) failures.push(`AIBase exited with ${String(exitCode)} on SIGTERM:\n${aibase.output().slice(-2_000)}`)
    const upstreamStats = await httpGet(upstream.port, "/stats", 5_000).then((r) => r.body, () => "(unavailable)")

    // ---- summary
    console.log("")
    console.log(`traffic ran ${(trafficMs / 1000).toFixed(1)} s (${requests} operations, ${options.clients} clients)`)
    console.log("requests by type and outcome:")
    const width = Math.max(...[...outcomes.keys()].map((type) => type.length))
    for (const [type, byOutcome] of [...outcomes].sort((a, b) => a[0].localeCompare(b[0]))) {
      const total = [...byOutcome.values()].reduce((sum, n) => sum + n, 0)
      const parts = [...byOutcome].sort((a, b) => b[1] - a[1]).map(([outcome, n]) => `${outcome} ${n}`)
      console.log(`  ${type.padEnd(width)}  ${String(total).padStart(6)}  ${parts.join(", ")}`)
    }
    const rss = samples.map((sample) => sample.rssKiB).filter(Number.isFinite)
    console.log(
      `RSS (MiB): first ${mib(rss[0] ?? Number.NaN)}, min ${mib(Math.min(...rss))}, max ${mib(Math.max(...rss))}, ` +
        `last ${mib(rss[rss.length - 1] ?? Number.NaN)} (${rss.length} samples every ${options.sampleMs / 1000} s); after the clients left ${mib(rssAfter)}`
    )
    if (options.samplesOut !== undefined) {
      writeFileSync(options.samplesOut, JSON.stringify({ options, samples, healthLatencies }, null, 1))
      console.log(`  samples written to ${options.samplesOut}`)
    }
    const verdict = memoryVerdict(samples, options)
    memoryJudged = verdict.judged
    for (const line of verdict.lines) console.log(`  ${line}`)
    failures.push(...verdict.failures)
    const sortedLatency = [...healthLatencies].sort((a, b) => a - b)
    console.log(
      `/health latency (ms): p50 ${ms(quantile(sortedLatency, 0.5))}, p99 ${ms(quantile(sortedLatency, 0.99))}, ` +
        `max ${ms(sortedLatency[sortedLatency.length - 1] ?? Number.NaN)} (${sortedLatency.length} probes, ${healthFailures.length} failed)`
    )
    console.log(
      `  (this client's own event-loop delay: p99 ${ms(clientDelay.percentile(99) / 1e6)} ms, max ${ms(clientDelay.max / 1e6)} ms)`
    )
    console.log(`end state: ${endState}; AIBase exit code on SIGTERM: ${String(exitCode)}`)
    console.log(`fake upstream: ${upstreamStats}`)
    if (healthFailures.length > 0) failures.push(`/health failed ${healthFailures.length} time(s): ${summarize(healthFailures).join("; ")}`)
    if (lost.length > 0) {
      failures.push(`${lost.length} request(s) ended without their final frame: ${summarize(lost.map((l) => l.replace(/ c\d+-\d+:/, ":"))).join("; ")}`)
    }
    if (stray > 0) {
      failures.push(
        `${stray} frame(s) arrived for no waiting request (after their request's final frame, or unknown` +
          `${lost.length > 0 ? "; late frames of the requests given up on above count too" : ""})`
      )
    }
  } catch (error) {
    failures.push(`the soak could not run: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
  } finally {
    if (server?.alive()) await stop(server, 5_000)
    if (upstream?.alive()) await stop(upstream, 5_000)
  }
  console.log(`took ${((Date.now() - startedAt) / 1000).toFixed(1)} s`)
  if (failures.length > 0) {
    for (const failure of failures) console.log(`FAIL: ${failure}`)
    process.exit(1)
  }
  const memory = memoryJudged === "nothing"
    ? "memory not judged (run too short)"
    : memoryJudged === "jumps"
    ? "no jump of the RSS floor (too short for a trend verdict)"
    : "the RSS floor is not growing"
  console.log(`PASS: no request lost its final frame, ${memory}, /health answered, slots released, clean exit`)
  process.exit(0)
}

await main()
