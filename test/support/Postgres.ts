/**
 * A throwaway PostgreSQL cluster for tests: initdb into a temp dir, pg_ctl
 * start on a free port of 127.0.0.1 (no other interface), one database,
 * trust auth for the `postgres` user. `stop()` / `start()` keep the data and
 * the port, so tests can take the server away and bring it back; `destroy()`
 * stops it and removes the temp dir.
 *
 * PostgreSQL refuses to run as root, so as root every binary runs via
 * `runuser -u postgres --` in a temp dir owned by `postgres`.
 *
 * Tests in this repository must not skip silently when PostgreSQL is missing:
 * call `requirePostgres()` (or just `startPostgres()`, which throws the same
 * error). `.ci/run` installs Debian's postgresql on a fresh machine.
 */
import { execFile } from "node:child_process"
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync } from "node:fs"
import { chown, mkdtemp, readFile, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { delimiter, dirname, join } from "node:path"
import { promisify } from "node:util"
import { afterAll, beforeAll } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import { freePort } from "./Ports.js"

export interface PostgresCluster {
  readonly host: "127.0.0.1"
  readonly port: number
  readonly database: string
  readonly user: string
  /** postgres://postgres@127.0.0.1:PORT/DB */
  readonly url: string
  /** `pg_ctl stop -m fast`: the data stays, `start()` brings it back. */
  stop(): Promise<void>
  /** Starts it again on the same port with the same data. */
  start(): Promise<void>
  /** Stops it if running and removes the temp dir. Safe to call twice. */
  destroy(): Promise<void>
}

export interface StartPostgresOptions {
  /** The database to create (default: "test"). "postgres" exists already. */
  readonly database?: string
}

const run = promisify(execFile)

const PREFERRED_BIN = "/usr/lib/postgresql/15/bin"
const INSTALL_HINT =
  "PostgreSQL is not installed: no initdb in /usr/lib/postgresql/*/bin nor on PATH. " +
  "Install it with `apt-get install -y --no-install-recommends postgresql` (as root or via sudo); " +
  ".ci/run does this on a fresh machine."

/**
 * Per-step deadlines: each step takes well under a second here (initdb ~1 s),
 * so these are for a busy CI machine; each stays under vitest's 30 s hook timeout.
 */
const INITDB_TIMEOUT_MS = 20_000
const START_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 10_000
const CREATEDB_TIMEOUT_MS = 10_000

const isExecutable = (path: string): boolean => {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

const onPath = (name: string): string | undefined =>
  (process.env["PATH"] ?? "")
    .split(delimiter)
    .filter((dir) => dir !== "")
    .map((dir) => join(dir, name))
    .find(isExecutable)

/** Numerically: as strings, "9.6" would sort after "16". */
const versionOrder = (a: string, b: string): number => {
  const pa = a.split(".").map(Number)
  const pb = b.split(".").map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0)
    if (d !== 0) return d
  }
  return 0
}

/**
 * The directory of initdb: 15 when present (what the notes verified), else
 * the newest Debian version, else initdb on PATH followed through its symlink
 * (Debian's /usr/bin has no initdb; a symlink elsewhere leads to the real bin).
 */
const findBinDir = (): string | undefined => {
  if (isExecutable(join(PREFERRED_BIN, "initdb"))) return PREFERRED_BIN
  let versions: Array<string> = []
  try {
    versions = readdirSync("/usr/lib/postgresql").filter((v) => isExecutable(join("/usr/lib/postgresql", v, "bin", "initdb")))
  } catch {
    // no /usr/lib/postgresql at all
  }
  const newest = versions.sort(versionOrder).at(-1)
  if (newest !== undefined) return join("/usr/lib/postgresql", newest, "bin")
  const initdb = onPath("initdb")
  return initdb === undefined ? undefined : dirname(realpathSync(initdb))
}

/** A binary next to initdb, else on PATH (e.g. createdb from postgresql-client). */
const binary = (binDir: string, name: string): string => {
  const sibling = join(binDir, name)
  if (isExecutable(sibling)) return sibling
  const found = onPath(name)
  if (found === undefined) throw new Error(`${name} not found next to ${join(binDir, "initdb")} nor on PATH. ${INSTALL_HINT}`)
  return found
}

/** Whether initdb can be found, for code that wants to decide. */
export const postgresAvailable = (): boolean => findBinDir() !== undefined

/** Throws a clear error (with the install command) when PostgreSQL is missing. */
export const requirePostgres = (): void => {
  if (!postgresAvailable()) throw new Error(INSTALL_HINT)
}

const tail = (text: string, lines = 30): string => text.split("\n").slice(-lines).join("\n")

const readLogTail = async (log: string): Promise<string> => {
  try {
    return tail(await readFile(log, "utf8"))
  } catch {
    return "(no log file)"
  }
}

interface ExecFailure {
  readonly code?: number | string
  readonly stdout?: string
  readonly stderr?: string
  readonly killed?: boolean
  readonly signal?: string | null
}

const describeFailure = (error: unknown): string => {
  if (typeof error !== "object" || error === null) return String(error)
  const e = error as ExecFailure
  const how = e.killed === true
    ? `killed at its deadline (${e.signal ?? "?"})`
    : typeof e.code === "number" ? `exit code ${e.code}` : `could not run it (${e.code ?? "unknown error"})`
  const parts = [how]
  if (e.stderr) parts.push(`stderr:\n${tail(e.stderr)}`)
  if (e.stdout) parts.push(`stdout:\n${tail(e.stdout)}`)
  return parts.join("\n")
}

/**
 * Clusters not destroyed yet. pg_ctl detaches the postmaster into its own
 * session, so nothing stops it when the test process dies: vitest ends a fork
 * with SIGTERM (also on Ctrl-C, and after an afterAll that timed out), which
 * skips "exit" handlers. While a cluster lives, SIGTERM/SIGINT stop it first.
 */
const live = new Set<{ readonly emergencyStop: () => void }>()

const stopAllLive = (): void => {
  for (const cluster of live) cluster.emergencyStop()
  live.clear()
}

const onSignal = (signal: NodeJS.Signals): void => {
  stopAllLive()
  untrackSignals()
  // Our listener replaced the default action: re-raise so the process still ends.
  process.kill(process.pid, signal)
}

const trackSignals = (): void => {
  if (live.size !== 1) return
  process.on("exit", stopAllLive)
  process.on("SIGTERM", onSignal)
  process.on("SIGINT", onSignal)
}

const untrackSignals = (): void => {
  process.off("exit", stopAllLive)
  process.off("SIGTERM", onSignal)
  process.off("SIGINT", onSignal)
}

export const startPostgres = async (options: StartPostgresOptions = {}): Promise<PostgresCluster> => {
  const binDir = findBinDir()
  if (binDir === undefined) throw new Error(INSTALL_HINT)
  const initdb = binary(binDir, "initdb")
  const pgCtl = binary(binDir, "pg_ctl")
  const database = options.database ?? "test"
  const user = "postgres"
  const asRoot = process.getuid?.() === 0

  const dir = await mkdtemp(join(tmpdir(), "aibase-pg-"))
  const data = join(dir, "data")
  const log = join(dir, "log")

  // The command line of one binary: as root, through runuser (PostgreSQL refuses root).
  const command = (bin: string, args: ReadonlyArray<string>): [string, Array<string>] =>
    asRoot ? ["runuser", ["-u", user, "--", bin, ...args]] : [bin, [...args]]

  const exec = async (step: string, bin: string, args: ReadonlyArray<string>, timeout: number): Promise<void> => {
    const [file, argv] = command(bin, args)
    try {
      // cwd: the temp dir, which the postgres user can read (the repo may not be).
      await run(file, argv, { cwd: dir, timeout, killSignal: "SIGKILL", env: { ...process.env, LC_ALL: "C" } })
    } catch (error) {
      throw new Error(
        `PostgreSQL test cluster: ${step} failed (${file} ${argv.join(" ")}): ${describeFailure(error)}\n` +
          `--- ${log} (tail) ---\n${await readLogTail(log)}`
      )
    }
  }

  let port = 0
  let running = false
  let destroyed = false

  const pgCtlStart = (): Promise<void> =>
    exec("pg_ctl start", pgCtl, [
      "-D", data,
      // pg_ctl hands -o to a shell: quote the socket dir. Unix socket in the temp
      // dir (not /var/run/postgresql); TCP only on loopback; fsync off for speed.
      "-o", `-p ${port} -k '${dir}' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off`,
      "-l", log,
      "-w", "-t", String(START_TIMEOUT_MS / 1000 - 5),
      "start"
    ], START_TIMEOUT_MS).then(() => {
      running = true
    })

  const pgCtlStop = async (): Promise<void> => {
    await exec("pg_ctl stop -m fast", pgCtl, ["-D", data, "-m", "fast", "-w", "-t", String(STOP_TIMEOUT_MS / 1000 - 5), "stop"], STOP_TIMEOUT_MS)
    running = false
  }

  // The postmaster's pid from its pid file, when that process is still ours: a
  // pid file left by a crash may name a pid reused by something else since.
  const postmasterPid = (): number | undefined => {
    try {
      const pid = Number(readFileSync(join(data, "postmaster.pid"), "utf8").split("\n")[0])
      if (!Number.isInteger(pid) || pid <= 0) return undefined
      if (!existsSync("/proc/self")) return pid
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(data) ? pid : undefined
    } catch {
      return undefined // no pid file or no such process: nothing runs
    }
  }

  // Without pg_ctl: SIGQUIT is what `pg_ctl stop -m immediate` sends; SIGKILL when pg_ctl failed.
  const signalPostmaster = (signal: NodeJS.Signals): void => {
    const pid = postmasterPid()
    if (pid !== undefined) process.kill(pid, signal)
    running = false
  }

  const handle = {
    // Synchronous and instant, for process exit and signals: no child process.
    emergencyStop: (): void => {
      signalPostmaster("SIGQUIT")
      rmSync(dir, { recursive: true, force: true })
    }
  }

  const destroy = async (): Promise<void> => {
    if (destroyed) return
    destroyed = true
    try {
      // Also when a start timed out: the postmaster may have come up after all.
      if (running || postmasterPid() !== undefined) {
        try {
          await pgCtlStop()
        } catch {
          signalPostmaster("SIGKILL")
        }
      }
    } finally {
      live.delete(handle)
      if (live.size === 0) untrackSignals()
      await rm(dir, { recursive: true, force: true })
    }
  }

  live.add(handle)
  trackSignals()
  try {
    if (asRoot) {
      const uid = Number((await run("id", ["-u", user])).stdout.trim())
      const gid = Number((await run("id", ["-g", user])).stdout.trim())
      await chown(dir, uid, gid)
    }
    await exec("initdb", initdb, ["-D", data, "-U", user, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"], INITDB_TIMEOUT_MS)
    // The port is free when we look, but another worker may take it before the
    // postmaster binds: then try another one (only here; restarts keep the port).
    for (let attempt = 1; ; attempt++) {
      port = await freePort()
      const logBefore = await readFile(log, "utf8").catch(() => "")
      try {
        await pgCtlStart()
        break
      } catch (error) {
        const logNow = await readFile(log, "utf8").catch(() => "")
        const bindFailed = /could not bind|could not create any TCP\/IP sockets/i.test(logNow.slice(logBefore.length))
        if (!bindFailed || attempt >= 3) throw error
      }
    }
    if (database !== "postgres") {
      await exec("createdb", binary(binDir, "createdb"), ["-h", "127.0.0.1", "-p", String(port), "-U", user, database], CREATEDB_TIMEOUT_MS)
    }
  } catch (error) {
    await destroy()
    throw error
  }

  return {
    host: "127.0.0.1",
    port,
    database,
    user,
    url: `postgres://${user}@127.0.0.1:${port}/${encodeURIComponent(database)}`,
    stop: async () => {
      if (destroyed) throw new Error("PostgreSQL test cluster: stop() after destroy()")
      if (running) await pgCtlStop()
    },
    start: async () => {
      if (destroyed) throw new Error("PostgreSQL test cluster: start() after destroy()")
      if (!running) await pgCtlStart()
    },
    destroy
  }
}

/** The cluster as a scoped resource, for `it.scoped` / `layer()` in @effect/vitest. */
export const cluster = (options?: StartPostgresOptions): Effect.Effect<PostgresCluster, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() => startPostgres(options)),
    (c) => Effect.promise(() => c.destroy())
  )

/**
 * A cluster and a temporary folder for the tests of one file: started
 * before them, removed after them. `cluster()` and `folder()` are for use
 * inside tests.
 */
export const useClusterAndFolder = (options: { readonly database: string; readonly folderPrefix: string }) => {
  let folder: string | undefined
  let postgres: PostgresCluster | undefined
  beforeAll(async () => {
    folder = mkdtempSync(join(tmpdir(), options.folderPrefix))
    postgres = await startPostgres({ database: options.database })
  }, 60_000)
  afterAll(async () => {
    await postgres?.destroy()
    if (folder !== undefined) rmSync(folder, { recursive: true, force: true })
  })
  return {
    cluster: (): PostgresCluster => {
      if (postgres === undefined) throw new Error("PostgreSQL did not start")
      return postgres
    },
    folder: (): string => {
      if (folder === undefined) throw new Error("the temporary folder was not made")
      return folder
    }
  }
}
