/**
 * `npm run bench`: AIBase on the real upstream path (the openai SDK against a
 * fast fake OpenAI-compatible upstream) beside a floor (a bare `ws` +
 * `node:http` proxy speaking the same /ws envelope), side by side in one run,
 * the order alternated between repetitions, medians over repetitions.
 * Compare the ratios, not the absolute numbers: the machine is shared.
 *
 *   npm run bench                       # every scenario, 3 repetitions
 *   npm run bench -- --quick            # fewer and smaller, under 3 minutes, no scale
 *   npm run bench -- --only streams-50,pings --reps 5
 *   npm run bench -- --aibase-env WS_MAX_BUFFERED_BYTES=65536 --aibase-env FOO=bar
 *   npm run bench -- --dist             # AIBase from dist/main.js instead of src/ through tsx
 *   npm run bench -- --out /tmp/b.json  # where the JSON goes (default ./bench-results.json)
 *   npm run bench -- --aibase-http fetch  # which floor AIBase's embeddings are held against
 *   npm run bench -- --only ledger      # AIBase with the request ledger on (SQLite) beside DB_TYPE=none
 *   npm run bench -- --only resumable   # resumable streams ("resumable": true) beside plain ones, on AIBase
 *   npm run bench -- --only metrics     # AIBase with its metrics on (the default) beside METRICS_ENABLED=false
 *   npm run bench -- --only model-call  # where a request's CPU goes: the upstream call alone, and the rest
 *   npm run bench -- --aibase-node-arg=--cpu-prof --aibase-node-arg=--cpu-prof-dir=/tmp/prof  # node flags for AIBase
 *
 * Scenarios: streams-1, streams-50, streams-200, ledger, resumable, metrics,
 * embeddings, model-call, pings, memory, disconnect, scale-streams,
 * scale-idle (`--only streams` or `--only scale` selects a family).
 *
 * Processes (children, all on 127.0.0.1): the fake upstream
 * (bench/FakeUpstream.ts), the floor on node:http, the floor on fetch (for
 * embeddings), AIBase (`node --import tsx src/main.ts`); memory runs on fresh
 * processes of the floor and AIBase; the ledger scenario runs two more AIBase
 * processes, one with the ledger on and one with DB_TYPE=none; the resumable
 * scenario two more identical AIBase processes (the default database), one
 * sent plain streams and one resumable ones; the metrics scenario two more
 * AIBase processes (the default database), identical but for
 * METRICS_ENABLED (true on one, false on the other); the model-call
 * scenario runs bench/ModelCall.ts, which makes the upstream call alone the
 * way each server makes it, in one process against the same upstream. This
 * process is the client. Every wait has a deadline, every loop a bound, and a failing
 * request is counted.
 *
 * Every AIBase process records its requests the way `npm start` does (the
 * ledger on, DB_TYPE=sqlite), each into a fresh temporary SQLite file
 * (DB_NAME=<tmpdir>/aibase.db) that is removed afterwards, never into the
 * checkout; `--aibase-env DB_TYPE=...` / `--aibase-env DB_NAME=...` override
 * that (except in the ledger scenario, which always compares a temporary
 * SQLite file with DB_TYPE=none).
 */
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs"
import { execFile } from "node:child_process"
import { availableParallelism, loadavg, tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { type Conn, closeAll, directStream, openMany, runStreams, runWindowed } from "./Load.js"
import {
  cpuMicros,
  freePort,
  httpGet,
  openFilesLimit,
  type Proc,
  repoRoot,
  settledRss,
  spawnNode,
  stop
} from "./Processes.js"
import { defaults as upstreamDefaults, optionsFromEnv, type UpstreamStats } from "./FakeUpstream.js"
import { Reactivity } from "@effect/experimental"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Effect } from "effect"

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

const SCENARIOS = [
  "streams-1",
  "streams-50",
  "streams-200",
  "ledger",
  "resumable",
  "metrics",
  "embeddings",
  "model-call",
  "pings",
  "memory",
  "disconnect",
  "scale-streams",
  "scale-idle"
] as const
type Scenario = typeof SCENARIOS[number]

const usage = () => {
  console.error(
    "usage: npm run bench -- [--quick] [--only a,b] [--reps N] [--aibase-env K=V]... [--aibase-node-arg FLAG]... [--dist] [--out FILE] [--aibase-http node|fetch]\n" +
      `scenarios: ${SCENARIOS.join(", ")} (or a family: streams, scale)`
  )
  process.exit(2)
}

const parseArgs = (argv: ReadonlyArray<string>) => {
  let quick = false
  let dist = false
  let only: Array<string> | undefined
  let reps: number | undefined
  let out = "bench-results.json"
  let aibaseHttp: "node" | "fetch" = "node"
  const aibaseEnv: Record<string, string> = {}
  const aibaseNodeArgs: Array<string> = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? ""
    const [flag, inline] = arg.startsWith("--") && arg.includes("=") && !arg.startsWith("--aibase-env=") &&
        !arg.startsWith("--aibase-node-arg=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : arg.startsWith("--aibase-env=")
      ? ["--aibase-env", arg.slice("--aibase-env=".length)]
      : arg.startsWith("--aibase-node-arg=")
      ? ["--aibase-node-arg", arg.slice("--aibase-node-arg=".length)]
      : [arg, undefined]
    const value = () => inline ?? argv[++i] ?? usage()
    switch (flag) {
      case "--quick":
        quick = true
        break
      case "--dist":
        dist = true
        break
      case "--only":
        only = value().split(",").map((s) => s.trim()).filter((s) => s.length > 0)
        break
      case "--reps":
        reps = Math.max(1, Math.floor(Number(value())) || 1)
        break
      case "--out":
        out = value()
        break
      case "--aibase-http": {
        const v = value()
        if (v !== "node" && v !== "fetch") usage()
        aibaseHttp = v === "fetch" ? "fetch" : "node"
        break
      }
      case "--aibase-env": {
        const kv = value()
        const at = kv.indexOf("=")
        if (at <= 0) usage()
        aibaseEnv[kv.slice(0, at)] = kv.slice(at + 1)
        break
      }
      case "--aibase-node-arg":
        aibaseNodeArgs.push(value())
        break
      case "--help":
      case "-h":
        usage()
        break
      default:
        console.error(`unknown argument: ${arg}`)
        usage()
    }
  }
  for (const o of only ?? []) {
    if (!SCENARIOS.some((s) => s === o || s.startsWith(`${o}-`))) {
      console.error(`unknown scenario: ${o}`)
      usage()
    }
  }
  return { quick, dist, only, reps, out: resolve(process.cwd(), out), aibaseHttp, aibaseEnv, aibaseNodeArgs }
}

const args = parseArgs(process.argv.slice(2))

const selected = (scenario: Scenario): boolean =>
  args.only === undefined
    ? !(args.quick && scenario.startsWith("scale-"))
    : args.only.some((o) => scenario === o || scenario.startsWith(`${o}-`))

const profile = args.quick
  ? {
    reps: args.reps ?? 2,
    rounds: { 1: 10, 50: 2, 200: 1 } as Record<number, number>,
    /** Rounds of 50 streams per side and repetition in the ledger, resumable and metrics scenarios (more than streams-50: their targets are tight). */
    ledgerRounds: 10,
    /** Per side and repetition: at most this many requests, sent for at most this long. */
    embeddings: { count: 2_000, budgetMs: 3_000 },
    /** Rounds of one-chunk streams per side and repetition, and upstream calls per side and repetition measured alone. */
    modelCallRounds: 50,
    modelCallCount: 1_000,
    pings: { count: 20_000, budgetMs: 2_000 },
    memoryConnections: 2_000,
    memoryReps: 1,
    disconnectReps: 1
  }
  : {
    reps: args.reps ?? 3,
    rounds: { 1: 20, 50: 4, 200: 3 } as Record<number, number>,
    ledgerRounds: 20,
    embeddings: { count: 10_000, budgetMs: 8_000 },
    modelCallRounds: 100,
    modelCallCount: 2_000,
    pings: { count: 100_000, budgetMs: 5_000 },
    memoryConnections: 2_000,
    memoryReps: args.reps ?? 3,
    disconnectReps: args.reps ?? 3
  }

const SCALE_STREAMS = 1_000
const SCALE_IDLE = 10_000
const FD_LIMIT = 65_536
const ROUND_DEADLINE_MS = 60_000

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

const runStarted = performance.now()
const log = (message: string) =>
  console.error(`[${((performance.now() - runStarted) / 1000).toFixed(1).padStart(6)} s] ${message}`)
const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms))
const wallClock = () => performance.timeOrigin + performance.now()

const median = (xs: ReadonlyArray<number>): number => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (s.length === 0) return Number.NaN
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[mid] ?? Number.NaN) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2
}

const percentile = (xs: ReadonlyArray<number>, p: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  if (s.length === 0) return Number.NaN
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? Number.NaN
}

const message = (error: unknown) => (error instanceof Error ? error.message : String(error)).split("\n")[0] ?? ""

/** Rotates `xs` by `r` (so each repetition starts with a different side). */
const rotate = <A>(xs: ReadonlyArray<A>, r: number): Array<A> => xs.map((_, i) => xs[(i + r) % xs.length] as A)

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

type Side = "floor" | "aibase"
/** The ledger scenario's two AIBase processes: the ledger on (a temporary SQLite file) and off (DB_TYPE=none). */
type LedgerSide = "ledgerOn" | "ledgerOff"
/**
 * The resumable scenario's two AIBase processes, identical (the default
 * database, as "aibase"): one is sent plain streams, the other resumable ones
 * (so the frames the resumable one keeps in memory do not weigh on the plain side).
 */
type ResumeSide = "resumePlain" | "resumeOn"
/**
 * The metrics scenario's two AIBase processes, identical (the default
 * database, as "aibase") but for METRICS_ENABLED: "true" (the default) on
 * one, "false" (no metric updated) on the other.
 */
type MetricsSide = "metricsOn" | "metricsOff"
type Server = Side | "floorFetch" | LedgerSide | ResumeSide | MetricsSide

const notes: Array<string> = []
const note = (text: string) => {
  notes.push(text)
  log(`note: ${text}`)
}

const aibaseScript = (() => {
  if (!args.dist) return "src/main.ts"
  const built = join(repoRoot, "dist", "main.js")
  let builtAt = 0
  try {
    builtAt = statSync(built).mtimeMs
  } catch {
    console.error("--dist: dist/main.js does not exist; run `npm run build` first")
    process.exit(2)
  }
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((latest, entry) => {
      const path = join(dir, entry.name)
      return Math.max(latest, entry.isDirectory() ? newest(path) : statSync(path).mtimeMs)
    }, 0)
  if (newest(join(repoRoot, "src")) > builtAt) note("dist/main.js is older than src/: AIBase runs the last build, not the working tree")
  return "dist/main.js"
})()
const aibaseCommand = `node ${args.aibaseNodeArgs.map((a) => `${a} `).join("")}${aibaseScript.endsWith(".ts") ? "--import tsx " : ""}${aibaseScript}`

let upstream: Proc | undefined
const upstreamBase = () => `http://127.0.0.1:${upstream?.port ?? 0}/v1`

const startUpstream = () =>
  spawnNode({ name: "fake upstream", script: "bench/FakeUpstream.ts", env: {}, fdLimit: FD_LIMIT })

// Databases: each AIBase process gets its own temporary folder, removed when
// the process is discarded or, at the latest, when this process exits.

const tempDirs = new Set<string>()
const removeDir = (dir: string) => {
  tempDirs.delete(dir)
  try {
    rmSync(dir, { recursive: true, force: true })
  } catch (error) {
    console.error(`bench: could not remove ${dir}: ${message(error)}`)
  }
}
process.once("exit", () => {
  for (const dir of [...tempDirs]) removeDir(dir)
})

/** The SQLite file of each AIBase process that has one of ours. */
const databaseFiles = new Map<Proc, string>()

/** Removes the temporary database of a server that has stopped. */
const forget = (proc: Proc) => {
  const file = databaseFiles.get(proc)
  databaseFiles.delete(proc)
  if (file !== undefined) removeDir(dirname(file))
}

/** Stops a server and removes its temporary database. */
const discard = async (proc: Proc) => {
  await stop(proc)
  forget(proc)
}

/** Whether `--aibase-env` chose the database of the ordinary AIBase processes. */
const userDatabase = args.aibaseEnv["DB_TYPE"] !== undefined || args.aibaseEnv["DB_NAME"] !== undefined
const databaseDescription = userDatabase
  ? `DB_TYPE=${args.aibaseEnv["DB_TYPE"] ?? "sqlite (default)"}${args.aibaseEnv["DB_NAME"] === undefined ? "" : ` DB_NAME=${args.aibaseEnv["DB_NAME"]}`} (--aibase-env)`
  : "DB_TYPE=sqlite, a fresh temporary file per process (the ledger on, as `npm start` runs)"

/** `env` is applied last, over --aibase-env (a scenario's own choice, such as METRICS_ENABLED). */
const startAibase = async (ledger: "default" | "on" | "off", name?: string, env: Record<string, string> = {}): Promise<Proc> => {
  const port = await freePort()
  const temporary = ledger === "on" ||
    (ledger === "default" && (args.aibaseEnv["DB_TYPE"] ?? "sqlite") === "sqlite" && args.aibaseEnv["DB_NAME"] === undefined)
  const dir = temporary ? mkdtempSync(join(tmpdir(), "aibase-bench-")) : undefined
  if (dir !== undefined) tempDirs.add(dir)
  const file = dir === undefined ? undefined : join(dir, "aibase.db")
  const database: Record<string, string> = ledger === "off"
    ? { DB_TYPE: "none" }
    : file === undefined
    ? {}
    : { DB_TYPE: "sqlite", DB_NAME: file }
  try {
    const proc = await spawnNode({
      name: name ?? (ledger === "default" ? "AIBase" : `AIBase (ledger ${ledger})`),
      script: aibaseScript,
      nodeArgs: args.aibaseNodeArgs,
      port,
      fdLimit: FD_LIMIT,
      env: {
        LLM_PROVIDER: "openai",
        OPENAI_API_KEY: "sk-bench",
        OPENAI_BASE_URL: upstreamBase(),
        WS_MAX_IN_FLIGHT: "1000",
        MAX_CONNECTIONS: "20000",
        LOG_LEVEL: "warning",
        LOG_FORMAT: "json",
        SHUTDOWN_GRACE_SECONDS: "2",
        SERVER_HOST: "127.0.0.1",
        SERVER_PORT: String(port),
        // The default database first, so that --aibase-env overrides it; the ledger scenario's choice last.
        ...(ledger === "default" ? { ...database, ...args.aibaseEnv } : { ...args.aibaseEnv, ...database }),
        ...env
      }
    })
    if (file !== undefined) databaseFiles.set(proc, file)
    return proc
  } catch (error) {
    if (dir !== undefined) removeDir(dir)
    throw error
  }
}

const startServer = async (server: Server): Promise<Proc> => {
  if (server === "aibase") return startAibase("default")
  if (server === "ledgerOn") return startAibase("on")
  if (server === "ledgerOff") return startAibase("off")
  if (server === "resumePlain") return startAibase("default", "AIBase (plain streams)")
  if (server === "resumeOn") return startAibase("default", "AIBase (resumable streams)")
  if (server === "metricsOn") return startAibase("default", "AIBase (metrics on)", { METRICS_ENABLED: "true" })
  if (server === "metricsOff") return startAibase("default", "AIBase (metrics off)", { METRICS_ENABLED: "false" })
  return spawnNode({
    name: server === "floor" ? "floor (node:http)" : "floor (fetch)",
    script: "bench/FloorProxy.ts",
    fdLimit: FD_LIMIT,
    env: {
      OPENAI_BASE_URL: upstreamBase(),
      OPENAI_API_KEY: "sk-bench",
      ...(server === "floorFetch" ? { FLOOR_HTTP: "fetch" } : {})
    }
  })
}

const hot = new Map<Server, Proc>()

/** The long-lived server of `server`, (re)started when it is not running (a crash is noted). */
const serverFor = async (server: Server): Promise<Proc> => {
  const current = hot.get(server)
  if (current !== undefined && current.alive()) return current
  if (current !== undefined) {
    const code = await current.exited
    note(`${current.name} exited (${String(code)}) during the run; restarted. Its last output: ${current.output().slice(-1_500).trim()}`)
    forget(current)
  }
  const started = await startServer(server)
  hot.set(server, started)
  return started
}

const wsUrl = (proc: Proc) => `ws://127.0.0.1:${proc.port}/ws`

const upstreamStats = async (): Promise<UpstreamStats> => {
  const response = await httpGet(upstream?.port ?? 0, "/stats", 2_000)
  return JSON.parse(response.body) as UpstreamStats
}

/** Waits (bounded) until the upstream has no request in flight, so one side's tail does not load the next. */
const quiesce = async (deadlineMs = 3_000) => {
  const deadline = Date.now() + deadlineMs
  while (Date.now() < deadline) {
    const active = await upstreamStats().then((s) => s.active, () => 0)
    if (active <= 0) return
    await sleep(25)
  }
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

interface Target {
  readonly label: string
  readonly pass: (floor: number, aibase: number) => boolean
}

const ratioAtMost = (x: number): Target => ({ label: `≤${x}×`, pass: (f, a) => a / f <= x })
const ratioAtLeast = (x: number): Target => ({ label: `≥${x}×`, pass: (f, a) => a / f >= x })

interface Row {
  readonly scenario: string
  readonly metric: string
  readonly floor: number
  readonly aibase: number
  readonly decimals: number
  readonly target?: Target
  /** Ratio column shown (default true). */
  readonly ratio?: boolean
  /** Decimals of the ratio column (default 2). */
  readonly ratioDecimals?: number
  /** Override of the formatted cells. */
  readonly text?: { readonly floor: string; readonly aibase: string }
}

const rows: Array<Row> = []

/**
 * The rows the scenarios that compare AIBase with itself share (ledger
 * off/on, plain/resumable, metrics off/on): CPU per chunk against its target, chunks per
 * second, time to first token, failed streams. `before` is the floor column.
 */
const selfComparison = (
  scenario: string,
  streams: string,
  cpuTarget: number,
  before: (pick: (r: StreamRep) => number) => number,
  after: (pick: (r: StreamRep) => number) => number,
  failed: { readonly before: number; readonly after: number; readonly of: number }
): Array<Row> => [
  {
    scenario,
    metric: `server CPU per content chunk (µs), ${streams}`,
    floor: before((r) => r.cpuMicrosPerChunk),
    aibase: after((r) => r.cpuMicrosPerChunk),
    decimals: 2,
    ratioDecimals: 3,
    target: ratioAtMost(cpuTarget)
  },
  {
    scenario,
    metric: `content chunks per second, ${streams}`,
    floor: before((r) => r.chunksPerSecond),
    aibase: after((r) => r.chunksPerSecond),
    decimals: 0
  },
  {
    scenario,
    metric: "time to first token p50 (ms)",
    floor: before((r) => r.ttftP50),
    aibase: after((r) => r.ttftP50),
    decimals: 1
  },
  {
    scenario,
    metric: `failed streams (of ${failed.of})`,
    floor: failed.before,
    aibase: failed.after,
    decimals: 0,
    ratio: false
  }
]
const raw: Record<string, unknown> = {}

const fmt = (n: number, decimals: number) =>
  Number.isFinite(n)
    ? n.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals })
    : "n/a"

const resultOf = (row: Row): string => {
  if (row.target === undefined) return ""
  if (!Number.isFinite(row.aibase) || !Number.isFinite(row.floor)) return "n/a"
  return row.target.pass(row.floor, row.aibase) ? "pass" : "FAIL"
}

const ratioOf = (row: Row): number => row.aibase / row.floor

const table = (): string => {
  const lines = [
    "| scenario | metric | floor | AIBase | ratio | target | result |",
    "|---|---|---:|---:|---:|---|---|"
  ]
  for (const row of rows) {
    const ratio = row.ratio === false || !Number.isFinite(ratioOf(row)) ? "" : `${ratioOf(row).toFixed(row.ratioDecimals ?? 2)}×`
    lines.push(
      `| ${row.scenario} | ${row.metric} | ${row.text?.floor ?? fmt(row.floor, row.decimals)} | ${
        row.text?.aibase ?? fmt(row.aibase, row.decimals)
      } | ${ratio} | ${row.target?.label ?? ""} | ${resultOf(row)} |`
    )
  }
  return lines.join("\n")
}

/** Runs one side of a measurement; a failure is noted and yields `undefined`. */
const attempt = async <A>(what: string, run: () => Promise<A>): Promise<A | undefined> => {
  try {
    return await run()
  } catch (error) {
    note(`${what} failed: ${message(error)}`)
    return undefined
  }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

interface StreamRep {
  readonly ttftP50: number
  readonly ttftP99: number
  readonly chunksPerSecond: number
  /** Streams completed per second of the rounds' wall time. */
  readonly requestsPerSecond: number
  readonly cpuMicrosPerChunk: number
  readonly contentChunks: number
  readonly completed: number
  readonly failed: number
  readonly errors: ReadonlyArray<string>
  readonly upstreamCpuMicrosPerChunk: number
  /** `chat_completion_stream_start` frames received (one per resumable stream). */
  readonly startFrames: number
  /** Frames received for the streams (start, chunks, end or error). */
  readonly frames: number
  /** Frames whose `seq` was not the previous one + 1. */
  readonly seqErrors: number
}

/** Streams and embeddings sent to each server (what its ledger should hold). */
const recordedSent = new Map<Server, number>()
const countSent = (server: Server, requests: number) => recordedSent.set(server, (recordedSent.get(server) ?? 0) + requests)

/** Resumable streams started and their frames received, warm-up included (what the server should have stored). */
const resumableSent = { streams: 0, frames: 0 }

const measureStreams = async (
  server: Server,
  clients: number,
  rounds: number,
  tag: string,
  options: {
    /** Idle time still counted after the last stream ends (work a server does in the background, such as writing its ledger). */
    readonly settleMs?: number
    /** `"resumable": true` in every stream's payload. */
    readonly resumable?: boolean
    /** The model named in every stream's payload (a `fake:` model shapes the upstream's answer). */
    readonly model?: string
  } = {}
): Promise<StreamRep> => {
  const settleMs = options.settleMs ?? 0
  const resumable = options.resumable === true
  const proc = await serverFor(server)
  await quiesce()
  const opened = await openMany(wsUrl(proc), clients)
  try {
    const cpu0 = cpuMicros(proc.pid)
    const up0 = cpuMicros(upstream?.pid ?? 0)
    const result = await runStreams(opened.conns, rounds, {
      roundDeadlineMs: ROUND_DEADLINE_MS,
      tag,
      resumable,
      ...(options.model === undefined ? {} : { model: options.model })
    })
    countSent(server, opened.conns.length * rounds)
    if (resumable) {
      resumableSent.streams += opened.conns.length * rounds
      resumableSent.frames += result.frames
    }
    if (settleMs > 0) await sleep(settleMs)
    const cpu1 = cpuMicros(proc.pid)
    const up1 = cpuMicros(upstream?.pid ?? 0)
    const failed = result.failed + opened.failed * rounds
    return {
      ttftP50: percentile(result.ttfts, 50),
      ttftP99: percentile(result.ttfts, 99),
      chunksPerSecond: result.contentChunks / (result.wallMs / 1000),
      requestsPerSecond: result.completed / (result.wallMs / 1000),
      cpuMicrosPerChunk: result.contentChunks > 0 ? (cpu1 - cpu0) / result.contentChunks : Number.NaN,
      contentChunks: result.contentChunks,
      completed: result.completed,
      failed,
      errors: [...opened.errors, ...result.errors],
      upstreamCpuMicrosPerChunk: result.contentChunks > 0 ? (up1 - up0) / result.contentChunks : Number.NaN,
      startFrames: result.startFrames,
      frames: result.frames,
      seqErrors: result.seqErrors
    }
  } finally {
    await closeAll(opened.conns)
  }
}

const streamsScenario = async (clients: 1 | 50 | 200) => {
  const name = `streams-${clients}`
  const rounds = profile.rounds[clients] ?? 1
  log(`${name}: ${clients} client(s) × ${rounds} round(s) × ${profile.reps} repetition(s)`)
  const reps: Record<Side, Array<StreamRep | undefined>> = { floor: [], aibase: [] }
  const direct: Array<number> = []
  const added: Record<Side, Array<number>> = { floor: [], aibase: [] }
  for (let rep = 0; rep < profile.reps; rep++) {
    const order = rotate<Side>(["floor", "aibase"], rep)
    const medians: Partial<Record<Side, number>> = {}
    let directMedian = Number.NaN
    const measureDirect = async () => {
      await quiesce()
      const ttfts: Array<number> = []
      for (let i = 0; i < rounds; i++) {
        const t = await attempt("direct upstream stream", () => directStream(upstreamBase()))
        if (t !== undefined) ttfts.push(t)
      }
      directMedian = median(ttfts)
      direct.push(directMedian)
    }
    if (clients === 1 && rep % 2 === 0) await measureDirect()
    for (const side of order) {
      const result = await attempt(`${name} ${side}`, () => measureStreams(side, clients, rounds, `${name}-${rep}`))
      reps[side].push(result)
      if (result !== undefined) {
        medians[side] = result.ttftP50
        log(
          `  ${side.padEnd(6)} rep ${rep + 1}: TTFT p50 ${fmt(result.ttftP50, 1)} ms, p99 ${fmt(result.ttftP99, 1)} ms, ${
            fmt(result.chunksPerSecond, 0)
          } chunks/s, ${fmt(result.cpuMicrosPerChunk, 1)} µs CPU/chunk, ${result.failed} failed`
        )
        if (result.errors.length > 0) log(`    errors: ${result.errors.join("; ")}`)
      }
    }
    if (clients === 1 && rep % 2 === 1) await measureDirect()
    if (clients === 1) {
      log(`  direct rep ${rep + 1}: TTFT p50 ${fmt(directMedian, 1)} ms`)
      for (const side of ["floor", "aibase"] as const) added[side].push((medians[side] ?? Number.NaN) - directMedian)
    }
  }
  const m = (side: Side, pick: (r: StreamRep) => number) => median(reps[side].map((r) => (r === undefined ? Number.NaN : pick(r))))
  const sum = (side: Side, pick: (r: StreamRep) => number) =>
    reps[side].reduce((total, r) => total + (r === undefined ? rounds * clients : pick(r)), 0)
  const underLoad = clients >= 50
  rows.push(
    {
      scenario: name,
      metric: "time to first token p50 (ms)",
      floor: m("floor", (r) => r.ttftP50),
      aibase: m("aibase", (r) => r.ttftP50),
      decimals: 1,
      ...(underLoad ? { target: ratioAtMost(1.5) } : {})
    },
    {
      scenario: name,
      metric: "time to first token p99 (ms)",
      floor: m("floor", (r) => r.ttftP99),
      aibase: m("aibase", (r) => r.ttftP99),
      decimals: 1
    }
  )
  if (clients === 1) {
    rows.push({
      scenario: name,
      metric: `added time to first token over calling the upstream directly (ms; direct p50 ${fmt(median(direct), 1)} ms)`,
      floor: median(added.floor),
      aibase: median(added.aibase),
      decimals: 2,
      ratio: false,
      target: { label: "≤1.5 ms", pass: (_f, a) => a <= 1.5 }
    })
  }
  rows.push(
    {
      scenario: name,
      metric: "content chunks per second",
      floor: m("floor", (r) => r.chunksPerSecond),
      aibase: m("aibase", (r) => r.chunksPerSecond),
      decimals: 0,
      ...(clients === 200 ? { target: ratioAtLeast(0.9) } : {})
    },
    {
      scenario: name,
      metric: "server CPU per content chunk (µs)",
      floor: m("floor", (r) => r.cpuMicrosPerChunk),
      aibase: m("aibase", (r) => r.cpuMicrosPerChunk),
      decimals: 1,
      ...(underLoad ? { target: ratioAtMost(1.5) } : {})
    },
    {
      scenario: name,
      metric: `failed streams (of ${profile.reps * rounds * clients})`,
      floor: sum("floor", (r) => r.failed),
      aibase: sum("aibase", (r) => r.failed),
      decimals: 0,
      ratio: false
    }
  )
  raw[name] = { clients, rounds, reps, ...(clients === 1 ? { directTtftP50: direct, addedTtft: added } : {}) }
}

// ---------------------------------------------------------------------------
// The request ledger: AIBase with it on (SQLite) beside AIBase with DB_TYPE=none
// ---------------------------------------------------------------------------

const LEDGER_CLIENTS = 50
/** Counted after each side's last stream, so the ledger's last batch is written inside the measurement. */
const LEDGER_SETTLE_MS = 500

interface LedgerCount {
  readonly total: number
  readonly byType: Record<string, number>
}

const describeCount = (count: LedgerCount) =>
  `${count.total} (${Object.entries(count.byType).map(([type, n]) => `${type} ${n}`).join(", ") || "none"})`

/** GET /info's database section of a server. */
const databaseInfo = async (proc: Proc): Promise<{ type?: string; usage_recorded?: boolean }> => {
  const response = await httpGet(proc.port, "/info", 5_000)
  if (response.status !== 200) throw new Error(`GET /info answered ${response.status}`)
  return (JSON.parse(response.body) as { database?: { type?: string; usage_recorded?: boolean } }).database ?? {}
}

/** What a server reports it has written, by request type (GET /usage?group_by=type, the last 24 hours). */
const usageCount = async (proc: Proc): Promise<LedgerCount> => {
  const response = await httpGet(proc.port, "/usage?group_by=type", 10_000)
  if (response.status !== 200) throw new Error(`GET /usage answered ${response.status}: ${response.body.slice(0, 200)}`)
  const body = JSON.parse(response.body) as { rows?: ReadonlyArray<{ type?: string; requests?: number }> }
  const byType: Record<string, number> = {}
  for (const row of body.rows ?? []) byType[row.type ?? "?"] = (byType[row.type ?? "?"] ?? 0) + Number(row.requests ?? 0)
  return { total: Object.values(byType).reduce((a, b) => a + b, 0), byType }
}

/** The rows in a SQLite ledger file, by request type (read after its server has stopped). */
const fileCount = (filename: string): Promise<LedgerCount> =>
  Effect.gen(function*() {
    const sql = yield* SqliteClient.make({ filename, readonly: true, disableWAL: true })
    const rows = yield* sql<{ readonly type: string; readonly n: number }>`
      SELECT type, COUNT(*) AS n FROM aibase_requests GROUP BY type ORDER BY type`
    const byType: Record<string, number> = {}
    for (const row of rows) byType[row.type] = Number(row.n)
    return { total: Object.values(byType).reduce((a, b) => a + b, 0), byType }
  }).pipe(Effect.scoped, Effect.provide(Reactivity.layer), Effect.runPromise)

/**
 * The repetitions of a scenario that compares two AIBase processes with
 * each other (ledger, resumable, metrics): `rounds` rounds of `clients`
 * streams per side and repetition, the order alternated, each logged. Gives
 * each side's repetitions (`repsOf`), their median (`m`) and their sum (`sum`; a
 * missing repetition counts as `missing`).
 */
const pairedReps = async <S extends Server>(
  scenario: string,
  sides: readonly [S, S],
  label: Record<S, string>,
  measure: (side: S, rep: number) => Promise<StreamRep>,
  describe: (result: StreamRep) => string = () => ""
) => {
  const width = Math.max(...sides.map((side) => label[side].length))
  const bySide = new Map<S, Array<StreamRep | undefined>>(sides.map((side) => [side, []]))
  const repsOf = (side: S): Array<StreamRep | undefined> => bySide.get(side) ?? []
  for (let rep = 0; rep < profile.reps; rep++) {
    for (const side of rotate<S>([...sides], rep)) {
      const result = await attempt(`${scenario} ${label[side]}`, () => measure(side, rep))
      repsOf(side).push(result)
      if (result !== undefined) {
        log(
          `  ${scenario} ${label[side].padEnd(width)} rep ${rep + 1}: ${fmt(result.cpuMicrosPerChunk, 2)} µs CPU/chunk, ${
            fmt(result.chunksPerSecond, 0)
          } chunks/s, TTFT p50 ${fmt(result.ttftP50, 1)} ms, ${describe(result)}${result.failed} failed`
        )
        if (result.errors.length > 0) log(`    errors: ${result.errors.join("; ")}`)
      }
    }
  }
  const m = (side: S, pick: (r: StreamRep) => number) => median(repsOf(side).map((r) => (r === undefined ? Number.NaN : pick(r))))
  const sum = (side: S, pick: (r: StreamRep) => number, missing = 0) =>
    repsOf(side).reduce((total, r) => total + (r === undefined ? missing : pick(r)), 0)
  return { repsOf, m, sum }
}

const ledgerScenario = async () => {
  const clients = LEDGER_CLIENTS
  const rounds = profile.ledgerRounds
  const label: Record<LedgerSide, string> = { ledgerOn: "on", ledgerOff: "off" }
  log(`ledger: ${clients} clients × ${rounds} round(s) × ${profile.reps} repetition(s) on AIBase with the ledger on (SQLite, temporary file) and off (DB_TYPE=none)`)
  if (userDatabase) note("ledger: --aibase-env's DB_TYPE/DB_NAME do not apply here; it compares a temporary SQLite file with DB_TYPE=none")
  for (const side of ["ledgerOn", "ledgerOff"] as const) {
    await attempt(`ledger ${label[side]}: GET /info`, async () => {
      const info = await databaseInfo(await serverFor(side))
      log(`  ledger ${label[side].padEnd(3)}: database ${info.type ?? "?"}, usage recorded ${String(info.usage_recorded)}`)
      if (info.usage_recorded !== (side === "ledgerOn")) note(`ledger ${label[side]}: the server reports usage_recorded=${String(info.usage_recorded)}`)
    })
  }
  const { m, repsOf, sum: sumOf } = await pairedReps<LedgerSide>(
    "ledger",
    ["ledgerOn", "ledgerOff"],
    label,
    (side, rep) => measureStreams(side, clients, rounds, `l${rep}`, { settleMs: LEDGER_SETTLE_MS }),
    (result) => `${fmt(result.requestsPerSecond, 0)} streams/s, `
  )
  const sum = (side: LedgerSide, pick: (r: StreamRep) => number) => sumOf(side, pick, rounds * clients)

  // Did the ledger record? While serving (GET /usage), then in the file once the server has stopped and flushed.
  const sent = recordedSent.get("ledgerOn") ?? 0
  const on = hot.get("ledgerOn")
  const file = on === undefined ? undefined : databaseFiles.get(on)
  let live: LedgerCount | undefined
  let stored: LedgerCount | undefined
  if (on !== undefined && on.alive()) {
    live = await attempt("ledger: GET /usage", () => usageCount(on))
    if (live !== undefined) log(`  ledger rows written while serving (GET /usage?group_by=type): ${describeCount(live)}`)
  }
  for (const side of ["ledgerOn", "ledgerOff"] as const) {
    const proc = hot.get(side)
    if (proc === undefined) continue
    hot.delete(side)
    if (side === "ledgerOn" && file !== undefined) {
      await stop(proc)
      stored = await attempt(`ledger: reading ${file}`, () => fileCount(file))
      if (stored !== undefined) log(`  ledger rows in ${file} after shutdown: ${describeCount(stored)} (requests sent: ${sent})`)
    }
    await discard(proc)
  }
  if (stored !== undefined && stored.total < sent) note(`ledger: ${sent} recorded requests were sent but the file holds ${stored.total} rows`)
  if (stored !== undefined && live !== undefined && live.total < stored.total) {
    note(`ledger: ${stored.total - live.total} rows were written only at shutdown, outside the measurement`)
  }

  const streams = `${clients} streams`
  rows.push(
    ...selfComparison("ledger", streams, 1.05, (pick) => m("ledgerOff", pick), (pick) => m("ledgerOn", pick), {
      before: sum("ledgerOff", (r) => r.failed),
      after: sum("ledgerOn", (r) => r.failed),
      of: profile.reps * rounds * clients
    }),
    {
      scenario: "ledger",
      metric: `streams completed per second, ${streams}`,
      floor: m("ledgerOff", (r) => r.requestsPerSecond),
      aibase: m("ledgerOn", (r) => r.requestsPerSecond),
      decimals: 0
    },
    {
      scenario: "ledger",
      metric: `ledger rows written (of ${sent} recorded requests sent), while serving / in the file after shutdown`,
      floor: 0,
      aibase: stored?.total ?? Number.NaN,
      decimals: 0,
      ratio: false,
      text: { floor: "none", aibase: `${live === undefined ? "n/a" : fmt(live.total, 0)} / ${stored === undefined ? "n/a" : fmt(stored.total, 0)}` },
      target: { label: `${sent}`, pass: (_f, a) => a >= sent && sent > 0 }
    }
  )
  const reps = { ledgerOn: repsOf("ledgerOn"), ledgerOff: repsOf("ledgerOff") }
  raw["ledger"] = { clients, rounds, settleMs: LEDGER_SETTLE_MS, reps, recordedRequestsSent: sent, rowsWhileServing: live ?? null, rowsInFile: stored ?? null }
}

// ---------------------------------------------------------------------------
// Resumable streams ("resumable": true) beside plain ones, on two identical AIBase processes
// ---------------------------------------------------------------------------

const RESUMABLE_CLIENTS = 50

interface StoredStreams {
  /** Rows in aibase_streams, and of those the finished ones. */
  readonly streams: number
  readonly finished: number
  /** Frames in aibase_stream_frames (stored as segments of consecutive frames). */
  readonly frames: number
}

/** What a SQLite file holds of resumable streams (read after its server has stopped). */
const storedStreams = (filename: string): Promise<StoredStreams> =>
  Effect.gen(function*() {
    const sql = yield* SqliteClient.make({ filename, readonly: true, disableWAL: true })
    const streams = yield* sql<{ readonly n: number; readonly finished: number }>`
      SELECT COUNT(*) AS n, COUNT(finished_at) AS finished FROM aibase_streams`
    const frames = yield* sql<{ readonly n: number }>`SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) AS n FROM aibase_stream_frames`
    return {
      streams: Number(streams[0]?.n ?? 0),
      finished: Number(streams[0]?.finished ?? 0),
      frames: Number(frames[0]?.n ?? 0)
    }
  }).pipe(Effect.scoped, Effect.provide(Reactivity.layer), Effect.runPromise)

const resumableScenario = async () => {
  const clients = RESUMABLE_CLIENTS
  const rounds = profile.ledgerRounds
  const label: Record<ResumeSide, string> = { resumePlain: "plain", resumeOn: "resumable" }
  log(
    `resumable: ${clients} clients × ${rounds} round(s) × ${profile.reps} repetition(s), plain streams and resumable ones ("resumable": true) on two identical AIBase processes; database: ${databaseDescription}`
  )
  const { m, repsOf, sum } = await pairedReps<ResumeSide>(
    "resumable",
    ["resumePlain", "resumeOn"],
    label,
    // The same settling time as the ledger's: the frames' last batch is written inside the measurement.
    (side, rep) => measureStreams(side, clients, rounds, `r${rep}`, { settleMs: LEDGER_SETTLE_MS, resumable: side === "resumeOn" }),
    (result) => `${result.startFrames} start frames, ${result.seqErrors} seq errors, `
  )
  const measured = profile.reps * rounds * clients
  const starts = { plain: sum("resumePlain", (r) => r.startFrames), resumable: sum("resumeOn", (r) => r.startFrames) }
  log(`  chat_completion_stream_start frames received: ${starts.resumable} of ${measured} resumable streams; ${starts.plain} on the plain side`)

  // What each side stored, once its server has stopped and flushed: the resumable side all its frames, the plain side none.
  const stored: Partial<Record<ResumeSide, StoredStreams>> = {}
  for (const side of ["resumePlain", "resumeOn"] as const) {
    const proc = hot.get(side)
    if (proc === undefined) continue
    hot.delete(side)
    const file = databaseFiles.get(proc)
    if (file !== undefined) {
      await stop(proc)
      const found = await attempt(`resumable: reading ${file}`, () => storedStreams(file))
      if (found !== undefined) {
        stored[side] = found
        log(`  ${label[side]}: ${found.streams} stream rows (${found.finished} finished), ${found.frames} frames in ${file} after shutdown`)
      }
    }
    await discard(proc)
  }
  if (stored.resumeOn === undefined) note("resumable: the stored streams were not counted (no temporary SQLite file: --aibase-env chose the database)")
  else if (stored.resumeOn.frames < resumableSent.frames || stored.resumeOn.streams < resumableSent.streams) {
    note(`resumable: ${resumableSent.streams} streams with ${resumableSent.frames} frames were received, but the file holds ${stored.resumeOn.streams} streams and ${stored.resumeOn.frames} frames`)
  }

  const streams = `${clients} streams`
  const storedText = (s: StoredStreams | undefined) => (s === undefined ? "n/a" : `${fmt(s.streams, 0)} / ${fmt(s.frames, 0)}`)
  rows.push(
    ...selfComparison("resumable", streams, 1.3, (pick) => m("resumePlain", pick), (pick) => m("resumeOn", pick), {
      before: sum("resumePlain", (r) => r.failed, rounds * clients),
      after: sum("resumeOn", (r) => r.failed, rounds * clients),
      of: measured
    }),
    {
      scenario: "resumable",
      metric: `chat_completion_stream_start frames received (of ${measured} resumable streams)`,
      floor: starts.plain,
      aibase: starts.resumable,
      decimals: 0,
      ratio: false,
      target: { label: `${measured} (plain 0)`, pass: (f, a) => a === measured && f === 0 }
    },
    {
      scenario: "resumable",
      metric: "frames whose seq was not the previous + 1",
      floor: sum("resumePlain", (r) => r.seqErrors),
      aibase: sum("resumeOn", (r) => r.seqErrors),
      decimals: 0,
      ratio: false,
      target: { label: "0", pass: (f, a) => f === 0 && a === 0 }
    },
    {
      scenario: "resumable",
      metric: `streams / frames stored after shutdown (resumable side received ${resumableSent.streams} / ${resumableSent.frames}, warm-up included)`,
      floor: stored.resumePlain?.frames ?? Number.NaN,
      aibase: stored.resumeOn?.frames ?? Number.NaN,
      decimals: 0,
      ratio: false,
      text: { floor: storedText(stored.resumePlain), aibase: storedText(stored.resumeOn) },
      target: {
        label: `${resumableSent.streams} / ${resumableSent.frames} (plain none)`,
        pass: (f, a) =>
          f === 0 && (stored.resumePlain?.streams ?? 0) === 0 && a >= resumableSent.frames &&
          (stored.resumeOn?.streams ?? 0) >= resumableSent.streams
      }
    }
  )
  raw["resumable"] = {
    clients,
    rounds,
    settleMs: LEDGER_SETTLE_MS,
    reps: { plain: repsOf("resumePlain"), resumable: repsOf("resumeOn") },
    startFrames: starts,
    received: resumableSent,
    stored: { plain: stored.resumePlain ?? null, resumable: stored.resumeOn ?? null }
  }
}

// ---------------------------------------------------------------------------
// Metrics: AIBase with its metrics on (the default) beside METRICS_ENABLED=false
// ---------------------------------------------------------------------------

const METRICS_CLIENTS = 50
const REQUESTS_TOTAL = "aibase_requests_total"

interface RequestsTotal {
  /** Whether the name appears at all (a sample, or only its HELP/TYPE lines). */
  readonly mentioned: boolean
  /** Its samples (one per label set) with a value. */
  readonly samples: ReadonlyArray<{ readonly labels: string; readonly value: number }>
}

/** The aibase_requests_total samples in a server's GET /metrics (no token: the bench sets no AUTH_TOKENS). */
const requestsTotal = async (proc: Proc): Promise<RequestsTotal> => {
  const response = await httpGet(proc.port, "/metrics", 10_000)
  if (response.status !== 200) throw new Error(`GET /metrics answered ${response.status}: ${response.body.slice(0, 200)}`)
  const sample = new RegExp(`^${REQUESTS_TOTAL}(\\{[^}]*\\})?[ \\t]+(\\S+)`)
  const samples = response.body.split("\n").flatMap((line) => {
    const found = sample.exec(line)
    return found === null ? [] : [{ labels: found[1] ?? "", value: Number(found[2]) }]
  })
  return { mentioned: response.body.includes(REQUESTS_TOTAL), samples }
}

/** The finished streams an aibase_requests_total scrape counts (every status). */
const streamsCounted = (total: RequestsTotal) =>
  total.samples.filter((s) => s.labels.includes(`type="chat_completion_stream"`)).reduce((n, s) => n + s.value, 0)

const metricsScenario = async () => {
  const clients = METRICS_CLIENTS
  const rounds = profile.ledgerRounds
  const label: Record<MetricsSide, string> = { metricsOn: "on", metricsOff: "off" }
  log(
    `metrics: ${clients} clients × ${rounds} round(s) × ${profile.reps} repetition(s) on AIBase with its metrics on (the default) and METRICS_ENABLED=false; database: ${databaseDescription}`
  )
  if (args.aibaseEnv["METRICS_ENABLED"] !== undefined) note("metrics: --aibase-env's METRICS_ENABLED does not apply here; it compares true with false")
  const { m, repsOf, sum: sumOf } = await pairedReps<MetricsSide>(
    "metrics",
    ["metricsOn", "metricsOff"],
    label,
    // Both sides record into their ledger (the default database): the same settling time as the ledger's.
    (side, rep) => measureStreams(side, clients, rounds, `m${rep}`, { settleMs: LEDGER_SETTLE_MS })
  )
  const sum = (side: MetricsSide, pick: (r: StreamRep) => number) => sumOf(side, pick, rounds * clients)

  // Once per run, while both still serve: the "on" side exposes aibase_requests_total, the "off" side no sample of it.
  const sent = recordedSent.get("metricsOn") ?? 0
  const scraped: Partial<Record<MetricsSide, RequestsTotal>> = {}
  for (const side of ["metricsOn", "metricsOff"] as const) {
    const proc = hot.get(side)
    if (proc === undefined || !proc.alive()) {
      note(`metrics ${label[side]}: the server was not running at the end of the scenario; GET /metrics not checked`)
      continue
    }
    const found = await attempt(`metrics ${label[side]}: GET /metrics`, () => requestsTotal(proc))
    if (found === undefined) continue
    scraped[side] = found
    log(
      `  metrics ${label[side].padEnd(3)}: GET /metrics ${found.mentioned ? "mentions" : "does not mention"} ${REQUESTS_TOTAL}, ${found.samples.length} sample(s), ${
        fmt(streamsCounted(found), 0)
      } chat_completion_stream request(s) counted`
    )
  }
  const on = scraped.metricsOn
  const off = scraped.metricsOff
  if (on !== undefined && !on.mentioned) note(`metrics on: GET /metrics does not contain ${REQUESTS_TOTAL}`)
  if (on !== undefined && on.mentioned && streamsCounted(on) < sent) {
    note(`metrics on: ${sent} streams were sent (warm-up included) but ${REQUESTS_TOTAL} counts ${streamsCounted(on)} chat_completion_stream requests`)
  }
  if (off !== undefined && off.samples.length > 0) {
    note(`metrics off: GET /metrics (METRICS_ENABLED=false) holds ${off.samples.length} ${REQUESTS_TOTAL} sample(s), e.g. ${REQUESTS_TOTAL}${off.samples[0]?.labels ?? ""} ${off.samples[0]?.value ?? ""}`)
  }
  for (const side of ["metricsOn", "metricsOff"] as const) {
    const proc = hot.get(side)
    if (proc === undefined) continue
    hot.delete(side)
    await discard(proc)
  }

  const streams = `${clients} streams`
  const countText = (t: RequestsTotal | undefined) =>
    t === undefined ? "n/a" : t.samples.length === 0 ? (t.mentioned ? "no sample" : "absent") : fmt(streamsCounted(t), 0)
  rows.push(
    ...selfComparison("metrics", streams, 1.05, (pick) => m("metricsOff", pick), (pick) => m("metricsOn", pick), {
      before: sum("metricsOff", (r) => r.failed),
      after: sum("metricsOn", (r) => r.failed),
      of: profile.reps * rounds * clients
    }),
    {
      scenario: "metrics",
      metric: `${REQUESTS_TOTAL} streams in GET /metrics (of ${sent} streams sent to the "on" side, warm-up included)`,
      floor: off === undefined ? Number.NaN : off.samples.length,
      aibase: on === undefined ? Number.NaN : streamsCounted(on),
      decimals: 0,
      ratio: false,
      text: { floor: countText(off), aibase: countText(on) },
      target: { label: `${sent} (off: no sample)`, pass: (f, a) => f === 0 && a >= sent && sent > 0 && on?.mentioned === true }
    }
  )
  raw["metrics"] = {
    clients,
    rounds,
    settleMs: LEDGER_SETTLE_MS,
    reps: { on: repsOf("metricsOn"), off: repsOf("metricsOff") },
    streamsSentToOn: sent,
    requestsTotal: { on: on ?? null, off: off ?? null }
  }
}

interface WindowRep {
  readonly perSecond: number
  readonly cpuMicrosPerRequest: number
  readonly answered: number
  readonly failed: number
  readonly errors: ReadonlyArray<string>
}

const measureWindowed = async (
  server: Server,
  shape: {
    readonly connections: number
    readonly window: number
    readonly perConnection: number
    readonly budgetMs: number
  },
  frame: (requestId: string) => object,
  okType: string,
  tag: string
): Promise<WindowRep> => {
  const proc = await serverFor(server)
  await quiesce()
  const opened = await openMany(wsUrl(proc), shape.connections)
  try {
    const cpu0 = cpuMicros(proc.pid)
    const result = await runWindowed(opened.conns, {
      window: shape.window,
      perConnection: shape.perConnection,
      frame,
      okType,
      deadlineMs: shape.budgetMs + 60_000,
      budgetMs: shape.budgetMs,
      tag
    })
    const cpu1 = cpuMicros(proc.pid)
    return {
      perSecond: result.answered / (result.wallMs / 1000),
      cpuMicrosPerRequest: result.answered > 0 ? (cpu1 - cpu0) / result.answered : Number.NaN,
      answered: result.answered,
      failed: result.failed + opened.failed * shape.perConnection,
      errors: [...opened.errors, ...result.errors]
    }
  } finally {
    await closeAll(opened.conns)
  }
}

/** A stream of one content chunk, at once: what a request costs beyond its chunks. */
const ONE_CHUNK_MODEL = "fake:chunks=1,interval=0,delay=0"
const MODEL_CALL_CLIENTS = 20

/** What bench/ModelCall.ts prints: CPU µs per call for each repetition. */
interface ModelCallResult {
  readonly stream: { readonly floor: Array<number>; readonly aibase: Array<number> }
  readonly embedding: { readonly floor: Array<number>; readonly aibase: Array<number> }
}

const isModelCallResult = (u: unknown): u is ModelCallResult => {
  const sides = (v: unknown) =>
    typeof v === "object" && v !== null && "floor" in v && Array.isArray(v.floor) && "aibase" in v && Array.isArray(v.aibase)
  return typeof u === "object" && u !== null && "stream" in u && sides(u.stream) && "embedding" in u && sides(u.embedding)
}

/** Runs bench/ModelCall.ts against the fake upstream (bounded in time) and reads its one JSON line. */
const runModelCall = (count: number): Promise<ModelCallResult> =>
  new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ["--import", "tsx", "bench/ModelCall.ts"],
      {
        cwd: repoRoot,
        timeout: 240_000,
        env: { ...process.env, OPENAI_BASE_URL: upstreamBase(), MODEL_CALL_REPS: String(profile.reps), MODEL_CALL_COUNT: String(count) }
      },
      (error, stdout, stderr) => {
        if (error !== null) return reject(new Error(`ModelCall: ${error.message}\n${stderr.slice(-2_000)}`))
        try {
          const parsed: unknown = JSON.parse(stdout.trim().split("\n").at(-1) ?? "")
          if (isModelCallResult(parsed)) resolve(parsed)
          else reject(new Error(`ModelCall printed an unexpected result: ${stdout.slice(-500)}`))
        } catch (cause) {
          reject(new Error(`ModelCall printed no JSON: ${stdout.slice(-500)} ${String(cause)}`))
        }
      }
    )
  })

/**
 * Where a request's CPU goes: whole requests (streams of one content chunk,
 * so that the request and not its chunks is measured) on both servers,
 * then the upstream call alone, made in one process as each server makes
 * it (see bench/ModelCall.ts); the difference is the rest of the request.
 */
const modelCallScenario = async () => {
  const rounds = profile.modelCallRounds
  log(`model-call: ${MODEL_CALL_CLIENTS} clients × ${rounds} rounds of one-chunk streams × ${profile.reps} repetition(s), then the upstream call alone`)
  const whole: Record<Side, Array<number>> = { floor: [], aibase: [] }
  let failed = 0
  // This request shape's own warm-up (compiled code, pooled upstream connections), not counted.
  for (const side of ["floor", "aibase"] as const) {
    await attempt(`model-call warm-up ${side}`, () => measureStreams(side, MODEL_CALL_CLIENTS, rounds, "mcw", { model: ONE_CHUNK_MODEL }))
  }
  for (let rep = 0; rep < profile.reps; rep++) {
    for (const side of rotate<Side>(["floor", "aibase"], rep)) {
      const result = await attempt(
        `model-call ${side}`,
        // The ledger's background write of these requests is counted too (it is part of each request's cost).
        () => measureStreams(side, MODEL_CALL_CLIENTS, rounds, `mc${rep}`, { model: ONE_CHUNK_MODEL, settleMs: LEDGER_SETTLE_MS })
      )
      if (result === undefined) {
        whole[side].push(Number.NaN)
        continue
      }
      failed += result.failed
      const perRequest = result.completed > 0 ? (result.cpuMicrosPerChunk * result.contentChunks) / result.completed : Number.NaN
      whole[side].push(perRequest)
      log(`  ${side.padEnd(6)} rep ${rep + 1}: ${fmt(perRequest, 0)} µs CPU per request, ${result.failed} failed`)
    }
  }
  const alone = await attempt("model-call alone", () => runModelCall(profile.modelCallCount))
  const m = (xs: ReadonlyArray<number> | undefined) => (xs === undefined ? Number.NaN : median(xs))
  if (alone !== undefined) {
    log(`  upstream call alone, stream: floor ${alone.stream.floor.map((x) => fmt(x, 0)).join(", ")} µs; AIBase ${alone.stream.aibase.map((x) => fmt(x, 0)).join(", ")} µs`)
    log(`  upstream call alone, embedding: floor ${alone.embedding.floor.map((x) => fmt(x, 0)).join(", ")} µs; AIBase ${alone.embedding.aibase.map((x) => fmt(x, 0)).join(", ")} µs`)
  }
  raw["model-call"] = { whole, alone: alone ?? null }
  const call = { floor: m(alone?.stream.floor), aibase: m(alone?.stream.aibase) }
  rows.push(
    {
      scenario: "model-call",
      metric: "server CPU per one-chunk streamed request, whole request (µs)",
      floor: median(whole.floor),
      aibase: median(whole.aibase),
      decimals: 0
    },
    {
      scenario: "model-call",
      metric: "of which the upstream call, measured alone: a bare node:http POST / the openai SDK over NodeFetch (µs)",
      floor: call.floor,
      aibase: call.aibase,
      decimals: 0
    },
    {
      scenario: "model-call",
      metric: "the rest of the request: protocol, validation, ledger, metrics (µs, whole − call)",
      floor: median(whole.floor) - call.floor,
      aibase: median(whole.aibase) - call.aibase,
      decimals: 0
    },
    {
      scenario: "model-call",
      metric: "the upstream call alone for an embedding of 1,536 floats (µs)",
      floor: m(alone?.embedding.floor),
      aibase: m(alone?.embedding.aibase),
      decimals: 0
    },
    {
      scenario: "model-call",
      metric: `failed streams (of ${MODEL_CALL_CLIENTS * rounds * profile.reps * 2}, both sides)`,
      floor: failed,
      aibase: failed,
      decimals: 0,
      ratio: false
    }
  )
}

const embeddingFrame = (requestId: string) => ({
  type: "embedding",
  request_id: requestId,
  payload: { input: "The quick brown fox jumps over the lazy dog", model: "text-embedding-3-small" }
})

const pingFrame = (requestId: string) => ({ type: "ping", request_id: requestId })

const embeddingsScenario = async () => {
  const connections = 50
  const shape = {
    connections,
    window: 1,
    perConnection: Math.max(1, Math.round(profile.embeddings.count / connections)),
    budgetMs: profile.embeddings.budgetMs
  }
  log(`embeddings: ${connections} connections, one request in flight each, for ${shape.budgetMs / 1000} s (at most ${shape.perConnection} each) × ${profile.reps} repetition(s)`)
  type EmbeddingServer = Side | "floorFetch"
  const reps: Record<EmbeddingServer, Array<WindowRep | undefined>> = { floor: [], floorFetch: [], aibase: [] }
  for (let rep = 0; rep < profile.reps; rep++) {
    for (const server of rotate<EmbeddingServer>(["floor", "floorFetch", "aibase"], rep)) {
      const result = await attempt(
        `embeddings ${server}`,
        () => measureWindowed(server, shape, embeddingFrame, "embedding_response", `e${rep}`)
      )
      reps[server].push(result)
      if (result !== undefined) {
        log(
          `  ${server.padEnd(10)} rep ${rep + 1}: ${fmt(result.perSecond, 0)} requests/s, ${
            fmt(result.cpuMicrosPerRequest, 0)
          } µs CPU/request, ${result.failed} failed${result.errors.length > 0 ? ` (${result.errors.join("; ")})` : ""}`
        )
      }
    }
  }
  const m = (server: EmbeddingServer, pick: (r: WindowRep) => number) =>
    median(reps[server].map((r) => (r === undefined ? Number.NaN : pick(r))))
  const sameClient = (client: "node" | "fetch") => (args.aibaseHttp === client ? { target: ratioAtLeast(0.9) } : {})
  rows.push(
    {
      scenario: "embeddings-50",
      metric: "requests per second, floor on node:http",
      floor: m("floor", (r) => r.perSecond),
      aibase: m("aibase", (r) => r.perSecond),
      decimals: 0,
      ...sameClient("node")
    },
    {
      scenario: "embeddings-50",
      metric: "requests per second, floor on fetch",
      floor: m("floorFetch", (r) => r.perSecond),
      aibase: m("aibase", (r) => r.perSecond),
      decimals: 0,
      ...sameClient("fetch")
    },
    {
      scenario: "embeddings-50",
      metric: "server CPU per request (µs), floor on node:http",
      floor: m("floor", (r) => r.cpuMicrosPerRequest),
      aibase: m("aibase", (r) => r.cpuMicrosPerRequest),
      decimals: 0
    },
    {
      scenario: "embeddings-50",
      metric: "server CPU per request (µs), floor on fetch",
      floor: m("floorFetch", (r) => r.cpuMicrosPerRequest),
      aibase: m("aibase", (r) => r.cpuMicrosPerRequest),
      decimals: 0
    },
    {
      scenario: "embeddings-50",
      metric: "failed requests (node:http floor / AIBase)",
      floor: reps.floor.reduce((t, r) => t + (r?.failed ?? 0), 0),
      aibase: reps.aibase.reduce((t, r) => t + (r?.failed ?? 0), 0),
      decimals: 0,
      ratio: false
    }
  )
  raw["embeddings"] = { ...shape, aibaseHttp: args.aibaseHttp, reps }
}

const pingsScenario = async () => {
  const shapes = [
    { name: "pings-1x100", connections: 1, window: 100, perConnection: profile.pings.count, budgetMs: profile.pings.budgetMs },
    {
      name: "pings-50x10",
      connections: 50,
      window: 10,
      perConnection: Math.round(profile.pings.count / 50),
      budgetMs: profile.pings.budgetMs
    }
  ]
  const out: Record<string, unknown> = {}
  for (const shape of shapes) {
    log(`${shape.name}: ${shape.connections} connection(s), ${shape.window} in flight each, for ${shape.budgetMs / 1000} s (at most ${shape.connections * shape.perConnection} pings) × ${profile.reps}`)
    const reps: Record<Side, Array<WindowRep | undefined>> = { floor: [], aibase: [] }
    for (let rep = 0; rep < profile.reps; rep++) {
      for (const side of rotate<Side>(["floor", "aibase"], rep)) {
        const result = await attempt(`${shape.name} ${side}`, () => measureWindowed(side, shape, pingFrame, "pong", `p${rep}`))
        reps[side].push(result)
        if (result !== undefined) {
          log(`  ${side.padEnd(6)} rep ${rep + 1}: ${fmt(result.perSecond, 0)} pings/s, ${fmt(result.cpuMicrosPerRequest, 1)} µs CPU/ping, ${result.failed} failed`)
        }
      }
    }
    const m = (side: Side, pick: (r: WindowRep) => number) =>
      median(reps[side].map((r) => (r === undefined ? Number.NaN : pick(r))))
    rows.push({
      scenario: shape.name,
      metric: "pings answered per second",
      floor: m("floor", (r) => r.perSecond),
      aibase: m("aibase", (r) => r.perSecond),
      decimals: 0,
      target: ratioAtLeast(0.5)
    })
    const failed = reps.aibase.reduce((t, r) => t + (r?.failed ?? 0), 0) + reps.floor.reduce((t, r) => t + (r?.failed ?? 0), 0)
    if (failed > 0) {
      rows.push({
        scenario: shape.name,
        metric: "failed pings",
        floor: reps.floor.reduce((t, r) => t + (r?.failed ?? 0), 0),
        aibase: reps.aibase.reduce((t, r) => t + (r?.failed ?? 0), 0),
        decimals: 0,
        ratio: false
      })
    }
    out[shape.name] = { ...shape, reps }
  }
  raw["pings"] = out
}

interface MemoryRep {
  readonly kibPerConnection: number
  readonly opened: number
  readonly beforeKiB: number
  readonly afterKiB: number
}

const measureMemory = async (side: Side, connections: number): Promise<MemoryRep> => {
  const proc = await startServer(side)
  try {
    const url = wsUrl(proc)
    // Warm-up: the first connections load code and grow pools that are not per connection.
    const warm = await openMany(url, 50)
    await closeAll(warm.conns)
    const beforeKiB = await settledRss(proc.pid, 3_000)
    const opened = await openMany(url, connections)
    const afterKiB = await settledRss(proc.pid, 5_000)
    await closeAll(opened.conns)
    if (opened.failed > 0) note(`memory ${side}: ${opened.failed} of ${connections} connections failed (${opened.errors.join("; ")})`)
    return {
      kibPerConnection: opened.conns.length > 0 ? (afterKiB - beforeKiB) / opened.conns.length : Number.NaN,
      opened: opened.conns.length,
      beforeKiB,
      afterKiB
    }
  } finally {
    await discard(proc)
  }
}

const memoryScenario = async () => {
  const connections = profile.memoryConnections
  log(`memory: ${connections} idle connections on a fresh process of each × ${profile.memoryReps}`)
  const reps: Record<Side, Array<MemoryRep | undefined>> = { floor: [], aibase: [] }
  for (let rep = 0; rep < profile.memoryReps; rep++) {
    for (const side of rotate<Side>(["floor", "aibase"], rep)) {
      const result = await attempt(`memory ${side}`, () => measureMemory(side, connections))
      reps[side].push(result)
      if (result !== undefined) {
        log(`  ${side.padEnd(6)} rep ${rep + 1}: ${fmt(result.kibPerConnection, 1)} KiB per connection (RSS ${result.beforeKiB} → ${result.afterKiB} KiB)`)
      }
    }
  }
  rows.push({
    scenario: `memory-${connections}`,
    metric: "RSS per idle WebSocket (KiB)",
    floor: median(reps.floor.map((r) => r?.kibPerConnection ?? Number.NaN)),
    aibase: median(reps.aibase.map((r) => r?.kibPerConnection ?? Number.NaN)),
    decimals: 1,
    target: ratioAtMost(1.5)
  })
  raw["memory"] = { connections, reps }
}

interface DisconnectRep {
  readonly streaming: number
  readonly aborted: number
  readonly msToLastAbort: number
}

const DISCONNECT_STREAMS = 20
const SLOW_MODEL = "fake:chunks=2000,interval=5"

const measureDisconnect = async (side: Side, rep: number): Promise<DisconnectRep> => {
  const proc = await serverFor(side)
  await quiesce()
  const opened = await openMany(wsUrl(proc), DISCONNECT_STREAMS)
  let conns: ReadonlyArray<Conn> = opened.conns
  try {
    const before = await upstreamStats()
    // Start every stream and wait (bounded) for each one's first chunk.
    const streaming = await Promise.all(conns.map((conn, i) =>
      new Promise<boolean>((done) => {
        const requestId = `d${rep}-${i}`
        const timer = setTimeout(() => done(false), 10_000)
        conn.on(requestId, (frame) => {
          if (frame.type === "chat_completion_stream_chunk") {
            conn.off(requestId)
            clearTimeout(timer)
            done(true)
          } else if (frame.type !== "") {
            conn.off(requestId)
            clearTimeout(timer)
            done(false)
          }
        })
        conn.send({
          type: "chat_completion_stream",
          request_id: requestId,
          payload: { messages: [{ role: "user", content: "A long story, please." }], model: SLOW_MODEL }
        })
      })
    ))
    const terminatedAt = wallClock()
    for (const conn of conns) conn.terminate()
    conns = []
    const deadline = Date.now() + 5_000
    let stats = await upstreamStats()
    while (stats.aborted - before.aborted < DISCONNECT_STREAMS && Date.now() < deadline) {
      await sleep(5)
      stats = await upstreamStats()
    }
    const aborted = stats.aborted - before.aborted
    return {
      streaming: streaming.filter((s) => s).length,
      aborted,
      msToLastAbort: aborted > 0 && stats.lastAbortAt !== null ? stats.lastAbortAt - terminatedAt : Number.NaN
    }
  } finally {
    await closeAll(conns)
    // Streams that were never aborted run on for up to 10 s: do not let them load the next measurement.
    await quiesce(12_000)
  }
}

const disconnectScenario = async () => {
  log(`disconnect: ${DISCONNECT_STREAMS} slow streams (${SLOW_MODEL}), clients terminated after the first chunk × ${profile.disconnectReps}`)
  const reps: Record<Side, Array<DisconnectRep | undefined>> = { floor: [], aibase: [] }
  for (let rep = 0; rep < profile.disconnectReps; rep++) {
    for (const side of rotate<Side>(["floor", "aibase"], rep)) {
      const result = await attempt(`disconnect ${side}`, () => measureDisconnect(side, rep))
      reps[side].push(result)
      if (result !== undefined && result.streaming < DISCONNECT_STREAMS) {
        note(`disconnect ${side}: only ${result.streaming} of ${DISCONNECT_STREAMS} streams had sent a chunk within 10 s when the clients left`)
      }
      if (result !== undefined) {
        log(`  ${side.padEnd(6)} rep ${rep + 1}: ${result.streaming} streaming, ${result.aborted} aborted upstream, last ${fmt(result.msToLastAbort, 1)} ms after terminate`)
      }
    }
  }
  const worst = (side: Side) => Math.min(...reps[side].map((r) => r?.aborted ?? 0))
  rows.push(
    {
      scenario: `disconnect-${DISCONNECT_STREAMS}`,
      metric: `upstream requests aborted (of ${DISCONNECT_STREAMS}, worst repetition)`,
      floor: worst("floor"),
      aibase: worst("aibase"),
      decimals: 0,
      ratio: false,
      target: { label: `${DISCONNECT_STREAMS}/${DISCONNECT_STREAMS}`, pass: (_f, a) => a === DISCONNECT_STREAMS }
    },
    {
      scenario: `disconnect-${DISCONNECT_STREAMS}`,
      metric: "ms from client terminate to the last upstream abort",
      floor: median(reps.floor.map((r) => r?.msToLastAbort ?? Number.NaN)),
      aibase: median(reps.aibase.map((r) => r?.msToLastAbort ?? Number.NaN)),
      decimals: 1,
      target: { label: "≤50 ms", pass: (_f, a) => a <= 50 }
    }
  )
  raw["disconnect"] = { streams: DISCONNECT_STREAMS, model: SLOW_MODEL, reps }
}

const scaleStreamsScenario = async () => {
  log(`scale-streams: ${SCALE_STREAMS} concurrent streams, one round, on each`)
  const results: Partial<Record<Side, StreamRep>> = {}
  for (const side of ["floor", "aibase"] as const) {
    const started = performance.now()
    const result = await attempt(`scale-streams ${side}`, () => measureStreams(side, SCALE_STREAMS, 1, "scale"))
    if (result !== undefined) {
      results[side] = result
      log(
        `  ${side.padEnd(6)}: ${result.completed} completed, ${result.failed} failed in ${
          fmt((performance.now() - started) / 1000, 1)
        } s; TTFT p50 ${fmt(result.ttftP50, 0)} ms${result.errors.length > 0 ? `; errors: ${result.errors.join("; ")}` : ""}`
      )
    }
  }
  rows.push(
    {
      scenario: `scale-streams-${SCALE_STREAMS}`,
      metric: "failed streams",
      floor: results.floor?.failed ?? Number.NaN,
      aibase: results.aibase?.failed ?? Number.NaN,
      decimals: 0,
      ratio: false,
      target: { label: "0", pass: (_f, a) => a === 0 }
    },
    {
      scenario: `scale-streams-${SCALE_STREAMS}`,
      metric: "completed streams",
      floor: results.floor?.completed ?? Number.NaN,
      aibase: results.aibase?.completed ?? Number.NaN,
      decimals: 0,
      ratio: false
    },
    {
      scenario: `scale-streams-${SCALE_STREAMS}`,
      metric: "content chunks per second",
      floor: results.floor?.chunksPerSecond ?? Number.NaN,
      aibase: results.aibase?.chunksPerSecond ?? Number.NaN,
      decimals: 0
    }
  )
  raw["scale-streams"] = results
}

interface IdleResult {
  readonly opened: number
  readonly held: number
  readonly pingsAnswered: number
  readonly errors: ReadonlyArray<string>
  readonly serverFdLimit: number
}

const scaleIdleScenario = async () => {
  const ownLimit = openFilesLimit("self")
  log(`scale-idle: ${SCALE_IDLE} idle connections held on each (this process may open ${ownLimit} files)`)
  if (ownLimit < SCALE_IDLE + 500) {
    note(`this process may open only ${ownLimit} files: fewer than ${SCALE_IDLE} connections can be held (run \`ulimit -n ${FD_LIMIT}\` first)`)
  }
  const results: Partial<Record<Side, IdleResult>> = {}
  for (const side of ["floor", "aibase"] as const) {
    const result = await attempt(`scale-idle ${side}`, async (): Promise<IdleResult> => {
      const proc = await serverFor(side)
      const opened = await openMany(wsUrl(proc), SCALE_IDLE, 500, 180_000)
      try {
        await sleep(2_000)
        // The server still answers on a sample of them.
        const sample = opened.conns.filter((_, i) => i % Math.max(1, Math.floor(opened.conns.length / 100)) === 0)
        const pings = await runWindowed(sample, {
          window: 1,
          perConnection: 1,
          frame: pingFrame,
          okType: "pong",
          deadlineMs: 15_000,
          tag: "idle"
        })
        return {
          opened: opened.conns.length,
          held: opened.conns.filter((c) => c.open).length,
          pingsAnswered: pings.answered,
          errors: [...opened.errors, ...pings.errors],
          serverFdLimit: openFilesLimit(proc.pid)
        }
      } finally {
        await closeAll(opened.conns, 10_000)
      }
    })
    if (result !== undefined) {
      results[side] = result
      log(`  ${side.padEnd(6)}: ${result.opened} opened, ${result.held} held, sample pings answered ${result.pingsAnswered}; server fd limit ${result.serverFdLimit}${result.errors.length > 0 ? `; errors: ${result.errors.join("; ")}` : ""}`)
    }
  }
  rows.push({
    scenario: `scale-idle-${SCALE_IDLE}`,
    metric: "idle connections held",
    floor: results.floor?.held ?? Number.NaN,
    aibase: results.aibase?.held ?? Number.NaN,
    decimals: 0,
    ratio: false,
    target: { label: String(SCALE_IDLE), pass: (_f, a) => a >= SCALE_IDLE }
  })
  raw["scale-idle"] = { ...results, benchFdLimit: ownLimit }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

/** The long-lived servers the selected scenarios use. */
const hotServers = (scenarios: ReadonlyArray<Scenario>): Array<Server> => {
  const servers: Array<Server> = []
  if (scenarios.some((s) => s !== "memory" && s !== "ledger" && s !== "resumable" && s !== "metrics")) servers.push("floor", "aibase")
  if (scenarios.includes("embeddings")) servers.push("floorFetch")
  if (scenarios.includes("ledger")) servers.push("ledgerOn", "ledgerOff")
  if (scenarios.includes("resumable")) servers.push("resumePlain", "resumeOn")
  if (scenarios.includes("metrics")) servers.push("metricsOn", "metricsOff")
  return servers
}

const warmUp = async (servers: ReadonlyArray<Server>) => {
  for (const server of servers) {
    await attempt(`warm-up ${server}`, async () => {
      const proc = await serverFor(server)
      // The ledger's, the resumable and the metrics scenario's two sides each.
      const paired = server === "ledgerOn" || server === "ledgerOff" || server === "resumePlain" || server === "resumeOn" ||
        server === "metricsOn" || server === "metricsOff"
      const resumable = server === "resumeOn"
      const opened = await openMany(wsUrl(proc), paired ? LEDGER_CLIENTS : 20)
      try {
        if (server !== "floorFetch") {
          await runWindowed(opened.conns.slice(0, 1), { window: 100, perConnection: 2_000, frame: pingFrame, okType: "pong", deadlineMs: 30_000, tag: "wp" })
          // Paired sides warm up on the measured shape, so the insert (and resumable) path is compiled before it counts.
          const rounds = paired ? 3 : 1
          const warm = await runStreams(opened.conns, rounds, { roundDeadlineMs: 30_000, tag: "ws", resumable })
          countSent(server, opened.conns.length * rounds)
          if (resumable) {
            resumableSent.streams += opened.conns.length * rounds
            resumableSent.frames += warm.frames
          }
        }
        if (selected("embeddings") && !paired) {
          await runWindowed(opened.conns, { window: 1, perConnection: 2, frame: embeddingFrame, okType: "embedding_response", deadlineMs: 30_000, tag: "we" })
          countSent(server, opened.conns.length * 2)
        }
      } finally {
        await closeAll(opened.conns)
      }
    })
  }
}

const main = async () => {
  const watchdogMs = args.quick && args.only === undefined ? 10 * 60_000 : 60 * 60_000
  setTimeout(() => {
    console.error(`bench: still running after ${watchdogMs / 60_000} minutes; giving up`)
    process.exit(3)
  }, watchdogMs).unref()
  process.once("SIGINT", () => process.exit(130))
  process.once("SIGTERM", () => process.exit(143))

  const scenarios = SCENARIOS.filter(selected)
  log(`AIBase: ${aibaseCommand}${Object.keys(args.aibaseEnv).length > 0 ? ` with ${Object.entries(args.aibaseEnv).map(([k, v]) => `${k}=${v}`).join(" ")}` : ""}`)
  log(`AIBase database: ${databaseDescription}`)
  log(`scenarios: ${scenarios.join(", ")}; ${profile.reps} repetition(s)${args.quick ? " (quick)" : ""}`)
  const servers = hotServers(scenarios)
  upstream = await startUpstream()
  log(`fake upstream on ${upstreamBase()}`)
  try {
    if (servers.length > 0) {
      await Promise.all(servers.map(serverFor))
      for (const [server, proc] of hot) log(`${server} on ${wsUrl(proc)} (pid ${proc.pid})`)
      const limit = openFilesLimit(hot.get("aibase")?.pid ?? 0)
      if (limit < FD_LIMIT && scenarios.includes("scale-idle")) {
        note(`the servers' open-files limit could not be raised to ${FD_LIMIT} (\`ulimit -n\` refused; it is ${limit}); ${SCALE_IDLE} idle connections need a little over ${SCALE_IDLE}`)
      }
      await warmUp(servers)
    }
    for (const scenario of scenarios) {
      switch (scenario) {
        case "streams-1":
          await streamsScenario(1)
          break
        case "streams-50":
          await streamsScenario(50)
          break
        case "streams-200":
          await streamsScenario(200)
          break
        case "ledger":
          await ledgerScenario()
          break
        case "resumable":
          await resumableScenario()
          break
        case "metrics":
          await metricsScenario()
          break
        case "embeddings":
          await embeddingsScenario()
          break
        case "model-call":
          await modelCallScenario()
          break
        case "pings":
          await pingsScenario()
          break
        case "memory":
          await memoryScenario()
          break
        case "disconnect":
          await disconnectScenario()
          break
        case "scale-streams":
          await scaleStreamsScenario()
          break
        case "scale-idle":
          await scaleIdleScenario()
          break
      }
    }
  } finally {
    await Promise.all([...hot.values(), ...(upstream === undefined ? [] : [upstream])].map(async (proc) => {
      if (!proc.alive()) note(`${proc.name} had exited (${String(await proc.exited)}) by the end of the run`)
      await discard(proc)
    }))
  }

  const wallSeconds = (performance.now() - runStarted) / 1000
  const shape = { ...upstreamDefaults, ...optionsFromEnv() }
  const header = `AIBase (\`${aibaseCommand}\`) beside the floor (bare \`ws\` + \`node:http\` proxy), fake upstream: first chunk after ${shape.firstChunkDelayMs} ms, ${shape.chunks} chunks ${shape.chunkIntervalMs} ms apart. ` +
    `Medians of ${profile.reps} repetition(s)${args.quick ? ", --quick" : ""}; ratio = AIBase / floor. ` +
    (rows.some((row) => row.scenario === "ledger")
      ? "In the ledger rows both columns are AIBase: the floor column with DB_TYPE=none, the AIBase column with the ledger on (SQLite); ratio = on / off. "
      : "") +
    (rows.some((row) => row.scenario === "resumable")
      ? "In the resumable rows both columns are AIBase (two identical processes): the floor column sent plain streams, the AIBase column resumable ones; ratio = resumable / plain. "
      : "") +
    (rows.some((row) => row.scenario === "model-call")
      ? "In the model-call rows the requests are streams of one content chunk at once (the request's cost, not its chunks'), and the upstream call is measured alone in a process of its own. "
      : "") +
    (rows.some((row) => row.scenario === "metrics")
      ? "In the metrics rows both columns are AIBase: the floor column with METRICS_ENABLED=false, the AIBase column with the metrics on (the default); ratio = on / off. "
      : "") +
    `${availableParallelism()} CPUs, load average ${loadavg().map((l) => l.toFixed(2)).join(" ")}; wall time ${wallSeconds.toFixed(0)} s.`
  console.log(`\n${header}\n\n${table()}\n`)
  if (notes.length > 0) console.log(`Notes:\n${notes.map((n) => `- ${n}`).join("\n")}\n`)
  const json = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: availableParallelism(),
    loadavg: loadavg(),
    wallSeconds,
    args: process.argv.slice(2),
    aibase: { command: aibaseCommand, env: args.aibaseEnv, database: databaseDescription },
    profile,
    rows: rows.map((row) => ({
      scenario: row.scenario,
      metric: row.metric,
      floor: row.floor,
      aibase: row.aibase,
      ratio: row.ratio === false ? null : ratioOf(row),
      target: row.target?.label ?? null,
      result: resultOf(row) || null
    })),
    notes,
    raw
  }
  writeFileSync(args.out, `${JSON.stringify(json, (_k, v: unknown) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`)
  console.log(`JSON: ${args.out}`)
}

main().then(() => process.exit(0), (error: unknown) => {
  console.error(error)
  process.exit(1)
})
