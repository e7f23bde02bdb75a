/**
 * `npm start`'s command (`node --import tsx src/main.ts`) as a child process
 * on 127.0.0.1, for the tests and benchmarks that need the real process:
 * signals, exit codes, logs, or a server that can be killed and restarted.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"

export const repoRoot = fileURLToPath(new URL("../..", import.meta.url))

export interface ServerProcess {
  readonly child: ChildProcess
  readonly port: number
  /** Everything it printed so far (stdout and stderr). */
  readonly output: () => string
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>
}

export interface StartOptions {
  /** The script, relative to the repository (default: src/main.ts). */
  readonly script?: string
  readonly env?: Record<string, string>
  readonly timeoutMs?: number
}

/**
 * Starts the server and resolves once it logs `listening on http://127.0.0.1:PORT`.
 * The developer's own OPENAI_* and AUTH_TOKENS are not inherited.
 */
export const start = (options: StartOptions = {}): Promise<ServerProcess> =>
  new Promise((resolve, reject) => {
    const { AUTH_TOKENS: _tokens, OPENAI_API_KEY: _key, OPENAI_BASE_URL: _url, ...inherited } = process.env
    const child = spawn(process.execPath, ["--import", "tsx", options.script ?? "src/main.ts"], {
      cwd: repoRoot,
      env: { ...inherited, SERVER_HOST: "127.0.0.1", SERVER_PORT: "0", LOG_FORMAT: "json", DB_TYPE: "none", ...options.env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)))
    let output = ""
    let started = false
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`the server did not start within ${options.timeoutMs ?? 30_000} ms\n${output}`))
    }, options.timeoutMs ?? 30_000)
    const onData = (data: Buffer) => {
      output += data.toString()
      const port = /listening on http:\/\/127\.0\.0\.1:(\d+)/i.exec(output)?.[1]
      if (port !== undefined && !started) {
        started = true
        clearTimeout(timer)
        resolve({ child, port: Number(port), output: () => output, exited })
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code) => {
      clearTimeout(timer)
      if (!started) reject(new Error(`the server exited with code ${code}\n${output}`))
    })
  })

/** Signals the server and waits for it to exit (SIGKILL after `timeoutMs`); resolves with the exit code. */
export const stop = async (
  server: ServerProcess,
  signal: NodeJS.Signals = "SIGTERM",
  timeoutMs = 5_000
): Promise<number | null> => {
  if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill(signal)
  const timer = setTimeout(() => server.child.kill("SIGKILL"), timeoutMs)
  const code = await server.exited
  clearTimeout(timer)
  return code
}
