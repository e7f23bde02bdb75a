/**
 * Child processes for the benchmarks: start a Node script (TypeScript through
 * tsx, or built JavaScript) on 127.0.0.1, optionally with a raised
 * file-descriptor limit, wait until it serves, and read its CPU time and
 * resident memory from /proc.
 *
 * Every wait has a deadline; every child is killed when this process exits.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { request } from "node:http"
import { fileURLToPath } from "node:url"

export const repoRoot = fileURLToPath(new URL("..", import.meta.url))

export interface Proc {
  readonly name: string
  readonly child: ChildProcess
  /** The Node process itself (bash `exec`s into it when the fd limit is raised). */
  readonly pid: number
  readonly port: number
  readonly output: () => string
  /** Resolves with the exit code, or the signal's name when killed. */
  readonly exited: Promise<number | string | null>
  readonly alive: () => boolean
}

export interface SpawnOptions {
  readonly name: string
  /** Relative to the repository (or absolute). `.ts` runs through tsx. */
  readonly script: string
  readonly env: Record<string, string>
  /** Node options before the script (such as `--cpu-prof`, which NODE_OPTIONS does not accept). */
  readonly nodeArgs?: ReadonlyArray<string>
  /** Raise the soft (and, as root, hard) open-files limit to this with `ulimit -n` before exec. */
  readonly fdLimit?: number
  /**
   * A port picked for the child (it must listen there): readiness is then a
   * 200 from `http://127.0.0.1:PORT/health`. Without it, the child must print
   * `listening on http://127.0.0.1:PORT`.
   */
  readonly port?: number
  readonly timeoutMs?: number
}

const children = new Set<ChildProcess>()
const killAll = () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
  }
}
process.once("exit", killAll)

/**
 * Environment variables of the developer's that must not leak into a
 * benchmarked server (the bench chooses its database; `--aibase-env` sets one).
 */
const scrubbed = new Set([
  "OPENAI_API_KEY",
  "OPENAI_BASE_URL",
  "AUTH_TOKENS",
  "ADMIN_TOKENS",
  "LLM_PROVIDER",
  "DB_TYPE",
  "DB_NAME",
  "DATABASE_URL",
  "DB_HOST",
  "DB_PORT",
  "DB_USER",
  "DB_PASSWORD",
  "DB_MAX_CONNECTIONS",
  "DB_REQUIRED"
])

/** A free TCP port on 127.0.0.1 (released before the child binds it). */
export { freePort } from "../test/support/Ports.js"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** GET a path on 127.0.0.1; resolves with the status and body, rejects after `timeoutMs`. */
export const httpGet = (port: number, path: string, timeoutMs = 2_000, method = "GET") =>
  new Promise<{ readonly status: number; readonly body: string }>((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, method, agent: false, timeout: timeoutMs }, (res) => {
      let body = ""
      res.setEncoding("utf8")
      res.on("data", (piece: string) => (body += piece))
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }))
      res.on("error", reject)
    })
    req.on("timeout", () => req.destroy(new Error(`GET ${path} timed out`)))
    req.on("error", reject)
    req.end()
  })

export const spawnNode = (options: SpawnOptions): Promise<Proc> => {
  const inherited: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !scrubbed.has(key)) inherited[key] = value
  }
  const nodeArgs = [
    ...(options.nodeArgs ?? []),
    ...(options.script.endsWith(".ts") ? ["--import", "tsx", options.script] : [options.script])
  ]
  const [command, args] = options.fdLimit === undefined
    ? [process.execPath, nodeArgs]
    : [
      "bash",
      [
        "-c",
        `ulimit -n ${options.fdLimit} 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"`,
        "bash",
        process.execPath,
        ...nodeArgs
      ]
    ]
  const child = spawn(command, args, {
    cwd: repoRoot,
    env: { ...inherited, ...options.env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  children.add(child)
  let output = ""
  const onData = (data: Buffer) => {
    output += data.toString()
    if (output.length > 200_000) output = output.slice(-100_000)
  }
  child.stdout?.on("data", onData)
  child.stderr?.on("data", onData)
  const exited = new Promise<number | string | null>((resolve) =>
    child.once("exit", (code, signal) => {
      children.delete(child)
      resolve(code ?? signal)
    })
  )
  const alive = () => child.exitCode === null && child.signalCode === null
  const timeoutMs = options.timeoutMs ?? 60_000

  const ready = async (): Promise<number> => {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (!alive()) throw new Error(`${options.name} exited (${String(await exited)}) before serving:\n${output.slice(-4_000)}`)
      if (options.port === undefined) {
        const port = /listening on http:\/\/127\.0\.0\.1:(\d+)/i.exec(output)?.[1]
        if (port !== undefined) return Number(port)
        await sleep(25)
      } else {
        const ok = await httpGet(options.port, "/health", 1_000).then((r) => r.status === 200, () => false)
        if (ok) return options.port
        await sleep(100)
      }
    }
    child.kill("SIGKILL")
    throw new Error(`${options.name} did not serve within ${timeoutMs} ms:\n${output.slice(-4_000)}`)
  }

  return ready().then((port) => ({
    name: options.name,
    child,
    pid: child.pid ?? 0,
    port,
    output: () => output,
    exited,
    alive
  }))
}

/** SIGTERM, then SIGKILL after `timeoutMs`; resolves with the exit code or signal. */
export const stop = async (proc: Proc, timeoutMs = 5_000): Promise<number | string | null> => {
  if (proc.alive()) proc.child.kill("SIGTERM")
  const timer = setTimeout(() => proc.child.kill("SIGKILL"), timeoutMs)
  const code = await proc.exited
  clearTimeout(timer)
  return code
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

const clockTicks = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
  } catch {
    return 100
  }
})()

/** utime + stime of a process, in microseconds (resolution: one clock tick, usually 10 ms). */
export const cpuMicros = (pid: number): number => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    // Fields 14 and 15 of proc(5), counted after the command name (which ends field 2).
    const ticks = Number(fields[11]) + Number(fields[12])
    return (ticks * 1_000_000) / clockTicks
  } catch {
    return Number.NaN
  }
}

/** Resident set size in KiB. */
export const rssKiB = (pid: number): number => {
  try {
    const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:"))
    return Number(line?.match(/(\d+)/)?.[1] ?? Number.NaN)
  } catch {
    return Number.NaN
  }
}

/** The soft open-files limit of a process (`Infinity` when unlimited, NaN when unknown). */
export const openFilesLimit = (pid: number | "self"): number => {
  try {
    const line = readFileSync(`/proc/${pid}/limits`, "utf8").split("\n").find((l) => l.startsWith("Max open files"))
    const soft = line?.split(/\s{2,}/)[1]
    return soft === "unlimited" ? Number.POSITIVE_INFINITY : Number(soft)
  } catch {
    return Number.NaN
  }
}

/**
 * Waits until RSS stops moving: three readings 200 ms apart within
 * `toleranceKiB` of each other, or `deadlineMs`. Returns the last reading.
 */
export const settledRss = async (pid: number, deadlineMs = 5_000, toleranceKiB = 256): Promise<number> => {
  const readings: Array<number> = []
  const deadline = Date.now() + deadlineMs
  for (;;) {
    readings.push(rssKiB(pid))
    const last = readings.slice(-3)
    if (last.length === 3 && Math.max(...last) - Math.min(...last) <= toleranceKiB) return last[2] ?? Number.NaN
    if (Date.now() >= deadline) return readings[readings.length - 1] ?? Number.NaN
    await sleep(200)
  }
}
