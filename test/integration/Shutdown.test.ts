/**
 * Graceful shutdown of the real process: `node src/main.ts` in a child
 * process, against a fake upstream in this one, then SIGTERM.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { Behaviour, FakeOpenAIService, textChunks } from "../support/FakeOpenAI.js"
import * as ServerProcess from "../support/ServerProcess.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const API_KEY = "sk-shutdown-test-SECRET-1234567890"
const TOKEN = "auth-token-SECRET-0987"

/** The real server process, killed when the scope closes. */
const startServer = (env: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.tryPromise({ try: () => ServerProcess.start({ env }), catch: (error) => error instanceof Error ? error : new Error(String(error)) }),
    (server) => Effect.sync(() => server.child.kill("SIGKILL"))
  ).pipe(Effect.map((server) => ({ ...server, exitCode: Effect.promise(() => server.exited) })))

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
      server.child.kill("SIGTERM")

      const health = yield* Wait.poll(
        Effect.promise(() => fetch(`${http}/health`).then(async (r) => ({ status: r.status, body: await r.json() }))),
        (h) => h.status === 503,
        { message: "/health to answer 503 after SIGTERM" }
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
      yield* fake.awaitAborted(1)

      const closed = yield* client.closed
      expect(closed.code).toBe(1001)
      const code = yield* Wait.awaitEvent(server.exitCode, { message: "the server process to exit", timeout: "5 seconds" })
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
      expect(failed.message).toMatch(/exited with code 1/)
      expect(failed.message).toContain("Invalid configuration")
      expect(failed.message).toContain("SERVER_PORT")
    }), { timeout: 30_000 })
})
