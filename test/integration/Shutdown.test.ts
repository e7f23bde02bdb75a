/**
 * Graceful shutdown of the real process: `node src/main.ts` in a child
 * process, against a fake upstream in this one, then SIGTERM.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Schedule } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Behaviour, FakeOpenAIService, textChunks } from "../support/FakeOpenAI.js"
import * as WsClient from "../support/WsClient.js"

const projectRoot = fileURLToPath(new URL("../..", import.meta.url))
const API_KEY = "sk-shutdown-test-SECRET-1234567890"
const TOKEN = "auth-token-SECRET-0987"

interface Child {
  readonly process: ChildProcess
  readonly port: number
  readonly output: () => string
  readonly exited: Effect.Effect<number | null>
}

/** Starts `npm start`'s command with the given environment and waits until it listens. */
const startServer = (env: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.async<Child, Error>((resume) => {
      const { OPENAI_API_KEY: _key, OPENAI_BASE_URL: _url, AUTH_TOKENS: _tokens, ...inherited } = process.env
      const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
        cwd: projectRoot,
        env: { ...inherited, SERVER_HOST: "127.0.0.1", SERVER_PORT: "0", LOG_FORMAT: "json", ...env },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let output = ""
      const exitCode = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
      let started = false
      const onData = (chunk: Buffer) => {
        output += chunk.toString()
        const match = output.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/)
        if (match?.[1] && !started) {
          started = true
          resume(Effect.succeed({
            process: child,
            port: Number(match[1]),
            output: () => output,
            exited: Effect.promise(() => exitCode)
          }))
        }
      }
      child.stdout?.on("data", onData)
      child.stderr?.on("data", onData)
      child.on("exit", (code) => {
        if (!started) resume(Effect.fail(new Error(`server exited with ${code}: ${output}`)))
      })
    }),
    (child) => Effect.sync(() => child.process.kill("SIGKILL"))
  )

describe("graceful shutdown", () => {
  it.scopedLive("SIGTERM: /health turns 503, upgrades are refused, in-flight work gets the grace period, the rest is stopped", () =>
    Effect.gen(function*() {
      const fake = yield* FakeOpenAIService
      const server = yield* startServer({
        LLM_PROVIDER: "openai",
        OPENAI_API_KEY: API_KEY,
        OPENAI_BASE_URL: fake.baseUrl,
        AUTH_TOKENS: TOKEN,
        SHUTDOWN_GRACE_SECONDS: "1.5",
        LOG_LEVEL: "debug"
      })
      const http = `http://127.0.0.1:${server.port}`
      const ws = `ws://127.0.0.1:${server.port}/ws?token=${TOKEN}`
      const client = yield* WsClient.connect(ws)

      // "short" finishes within the grace period; "long" stalls until it is stopped.
      fake.enqueue(
        Behaviour.stream(textChunks("one two three four five six seven eight"), { delayMs: 100 }),
        Behaviour.stream(textChunks("this one never ends"), { stallAfter: 2 })
      )
      const messages = [{ role: "user" as const, content: "hi" }]
      client.send({ type: "chat_completion_stream", request_id: "short", payload: { messages } })
      yield* fake.awaitRequests(1)
      client.send({ type: "chat_completion_stream", request_id: "long", payload: { messages } })
      yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "long"))

      const signalledAt = Date.now()
      server.process.kill("SIGTERM")

      const health = yield* Effect.promise(() => fetch(`${http}/health`).then(async (r) => ({ status: r.status, body: await r.json() }))).pipe(
        Effect.filterOrFail((h) => h.status === 503, () => "still ok"),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("1 second"))),
        Effect.orDie
      )
      expect(health.body).toEqual({ status: "shutting_down" })
      const refused = yield* Effect.flip(WsClient.connect(ws))
      expect(refused.message).toContain("503")

      const short = yield* client.collect("short")
      expect(short.at(-1)?.type).toBe("chat_completion_stream_end")
      const long = yield* client.collect("long")
      const last = long.at(-1)
      expect(last?.type).toBe("error")
      if (last?.type === "error") expect(last.data).toEqual({ category: "unavailable", code: "shutting_down", retryable: true })
      yield* fake.awaitAborted(1, "2 seconds")

      const closed = yield* client.closed
      expect(closed.code).toBe(1001)
      const code = yield* server.exited.pipe(Effect.timeout("5 seconds"))
      expect(code).toBe(0)
      expect(Date.now() - signalledAt).toBeLessThan(Duration.toMillis("1.5 seconds") + 2500)

      const output = server.output()
      expect(output).toContain("Shutting down")
      expect(output).not.toContain(API_KEY)
      expect(output).not.toContain(TOKEN)
    }).pipe(Effect.provide(FakeOpenAIService.Default)), { timeout: 30_000 })

  it.scopedLive("an invalid setting stops startup with exit code 1 and one message naming the variable", () =>
    Effect.gen(function*() {
      const failed = yield* Effect.flip(startServer({ SERVER_PORT: "abc" }))
      expect(failed.message).toMatch(/exited with 1/)
      expect(failed.message).toContain("Invalid configuration")
      expect(failed.message).toContain("SERVER_PORT")
    }), { timeout: 30_000 })
})
