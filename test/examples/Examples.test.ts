/** The examples, run as their users run them: `node --import tsx examples/...` child processes on the built package. */
//
// Without the "source" condition "aibase" resolves to ./dist, so these tests
// need a fresh `npm run build` (the project's `npm test` builds first) and also
// prove that the built package works.
import { describe, expect, it, layer } from "@effect/vitest"
import { Data, Duration, Effect, Schema } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { createServer } from "node:net"
import { fileURLToPath } from "node:url"
import * as TestServer from "../support/TestServer.js"
import * as WsClient from "../support/WsClient.js"

const projectRoot = fileURLToPath(new URL("../..", import.meta.url))
// tsx's start-up (and loading effect) takes a few seconds on a busy machine.
const RUN_TIMEOUT = Duration.seconds(30)

class ExampleError extends Data.TaggedError("ExampleError")<{ readonly message: string }> {}

interface Example {
  readonly process: ChildProcess
  readonly output: () => string
  readonly exited: Effect.Effect<number | null, ExampleError>
}

/** The environment of a user's shell, minus anything that would change what the examples do. */
const exampleEnv = (env: Record<string, string>): NodeJS.ProcessEnv => {
  const {
    NODE_OPTIONS: _options,
    AIBASE_TOKEN: _token,
    AUTH_TOKENS: _tokens,
    OPENAI_API_KEY: _key,
    OPENAI_BASE_URL: _url,
    ...inherited
  } = process.env
  // The examples keep nothing: no ledger file in the checkout.
  return { ...inherited, DB_TYPE: "none", ...env }
}

/** Starts an example; it is killed when the scope closes, if it is still running. */
const start = (script: string, args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  Effect.acquireRelease(
    Effect.sync((): Example => {
      const child = spawn(process.execPath, ["--import", "tsx", script, ...args], {
        cwd: projectRoot,
        env: exampleEnv(env),
        stdio: ["ignore", "pipe", "pipe"]
      })
      let output = ""
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
      child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
      const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
      return {
        process: child,
        output: () => output,
        exited: Effect.promise(() => exit).pipe(
          Effect.timeoutFail({
            duration: RUN_TIMEOUT,
            onTimeout: () => new ExampleError({ message: `${script} did not exit in time; output:\n${output}` })
          })
        )
      }
    }),
    (example) => Effect.sync(() => example.process.kill("SIGKILL"))
  )

/** Runs an example to its end and returns its exit code and output. */
const run = (script: string, args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  Effect.scoped(Effect.gen(function*() {
    const example = yield* start(script, args, env)
    const code = yield* example.exited
    return { code, output: example.output() }
  }))

/** Waits until the output matches `pattern` (or the example exits first). */
const waitForOutput = (example: Example, pattern: RegExp) =>
  Effect.async<RegExpMatchArray, ExampleError>((resume) => {
    const check = () => {
      const match = example.output().match(pattern)
      if (match !== null) resume(Effect.succeed(match))
    }
    const onExit = (code: number | null) =>
      resume(Effect.fail(new ExampleError({ message: `exited with ${code} before ${pattern}:\n${example.output()}` })))
    example.process.stdout?.on("data", check)
    example.process.stderr?.on("data", check)
    example.process.on("exit", onExit)
    check()
    return Effect.sync(() => {
      example.process.stdout?.off("data", check)
      example.process.stderr?.off("data", check)
      example.process.off("exit", onExit)
    })
  }).pipe(
    Effect.timeoutFail({
      duration: RUN_TIMEOUT,
      onTimeout: () => new ExampleError({ message: `no ${pattern} in time; output:\n${example.output()}` })
    })
  )

/** A loopback port with nothing listening on it. */
const closedPort = Effect.async<number>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

const Hello = Schema.Struct({ message: Schema.String, tools: Schema.Array(Schema.String) })

/** The text the CLI wrote for a stream: its "streaming:" line and every "…" line that carries it on. */
const streamedText = (output: string, requestId: string): string =>
  Array.from(output.matchAll(new RegExp(`^← \\[${requestId}\\] (?:streaming:|…) (.*)$`, "gm")), (match) => match[1]).join("")

// Concurrent: each test mostly waits for a child process to start up.
describe.concurrent("examples", () => {
  if (!existsSync(new URL("../../dist/index.js", import.meta.url))) {
    throw new Error("The examples import the built package: run `npm run build` first")
  }

  // A word delay long enough that the client's cancel reliably lands mid-stream.
  layer(TestServer.layer({ env: { OFFLINE_WORD_DELAY_MS: "20" } }), { excludeTestServices: true })(
    "clients against the real server",
    (it) => {
      it.effect("examples/client sends every request type over /ws and exits 0", () =>
        Effect.gen(function*() {
          const { port } = yield* TestServer.urls
          const { code, output } = yield* run("examples/client/main.ts", [`127.0.0.1:${port}`])
          expect(code, output).toBe(0)
          expect(output).toContain("← [ping-1] pong timestamp=")
          expect(output).toMatch(/← \[chat-1\] chat_completion_response model=gpt-4o-mini finish=stop/)
          expect(output).toMatch(/← \[stream-1\] streaming: \[offline model\] You said: "Tell me a short story"/)
          expect(output).toMatch(/← \[stream-1\] chat_completion_stream_end finish=stop/)
          expect(output).toMatch(/← \[embedding-1\] embedding_response model=\S+ 1 vector\(s\) of 256 dims/)
          expect(output).toMatch(/← \[tools-1\] tools_list_response 3 tools: .*get_weather/)
          expect(output).toMatch(/← \[tool-1\] tool_execute_response call_123 is_error=false ".*San Francisco, CA/)
          expect(output).toMatch(/← \[chat-tools-1\] chat_completion_response .*tools_run=\[get_weather\(\{"location":"Paris"\}\)\]/)
          expect(output).toContain("← [stream-to-cancel] error cancelled/cancelled retryable=false")
          expect(output).toContain("← [cancel-1] cancel_response request_id=stream-to-cancel cancelled=true")
          expect(output).toContain("Done: every request got its answer")
          // The cancelled stream's error frame is the only one.
          expect(output.match(/\] error /g)).toHaveLength(1)
        }), { timeout: 40_000 })

      it.effect("examples/client --drop-after 3 resumes its stream on a new connection, with the same text", () =>
        Effect.gen(function*() {
          const { port, ws } = yield* TestServer.urls
          const dropped = yield* run("examples/client/main.ts", [`127.0.0.1:${port}`, "--drop-after", "3"])
          expect(dropped.code, dropped.output).toBe(0)
          expect(dropped.output).toContain("(--drop-after 3: dropping the connection on purpose)")
          expect(dropped.output).toMatch(/\(connection dropped after seq (\d+); resumed stream [\w-]+ after \1\)/)
          expect(dropped.output).toContain("Done: every request got its answer")
          // What an uninterrupted run prints: the offline model streams the same text for the same messages
          // (asked here in-process, which spares the busy test machine another tsx start-up).
          const whole = yield* Effect.scoped(Effect.flatMap(WsClient.connect(ws), (client) =>
            client.request({
              type: "chat_completion_stream",
              request_id: "whole",
              payload: { messages: [{ role: "user", content: "Tell me a short story" }], max_tokens: 200 }
            })))
          const text = whole.map((frame) =>
            frame.type === "chat_completion_stream_chunk" ? frame.data.choices.map((choice) => choice.delta.content ?? "").join("") : ""
          ).join("")
          expect(text).toMatch(/^\[offline model\] You said: "Tell me a short story"/)
          // No gap and no repeat across the drop.
          expect(streamedText(dropped.output, "stream-1")).toBe(text)
          // It was cut in two (the first part before the drop), and ended once.
          expect(dropped.output.match(/^← \[stream-1\] … /gm), dropped.output).toHaveLength(1)
          expect(dropped.output.match(/← \[stream-1\] chat_completion_stream_end /g)).toHaveLength(1)
          // The requests after the stream went over the new connection.
          expect(dropped.output).toMatch(/← \[tools-1\] tools_list_response 3 tools/)
          expect(dropped.output).toContain("← [cancel-1] cancel_response request_id=stream-to-cancel")
        }), { timeout: 40_000 })

      it.effect("examples/effect-client calls every RPC over /rpc, resumes its stream after a drop, and handles the typed RateLimitError", () =>
        Effect.gen(function*() {
          const { port } = yield* TestServer.urls
          const { code, output } = yield* run("examples/effect-client/main.ts", [`127.0.0.1:${port}`, "--drop-after", "3"])
          expect(code, output).toBe(0)
          // The stream went on while the client was away: the resume continued it, over a new connection.
          expect(output).toMatch(/\(connection dropped after seq (\d+); resuming stream [\w-]+ after \1, attempt 1\)/)
          expect(output.match(/chat_completion_stream_end/g)).toHaveLength(1)
          expect(output).toMatch(/Ping → pong at \d{4}-/)
          expect(output).toContain("ChatCompletion → gpt-4o-mini: \"[offline model] You said: \\\"Hello!\\\"")
          expect(output).toMatch(/tool_execution get_weather\(\{"location":"Tokyo"\}\) → Sample data/)
          // Split by the drop line: the reply begins before it and ends after it.
          expect(output).toContain("[offline model] Based")
          expect(output).toContain("chat_completion_stream_end finish=stop")
          expect(output).toContain("Embedding → 2 vectors of 256 dims")
          expect(output).toMatch(/ToolsList → .*calculator.*get_weather/)
          expect(output).toContain("ToolExecute → calculator: 2 + 3 * 4 = 14 (is_error=false)")
          expect(output).toContain(
            "ChatCompletion → RateLimitError handled: category=rate_limit retryable=true code=offline_rate_limit"
          )
          expect(output).toContain("Done: every RPC answered")
        }), { timeout: 40_000 })
    }
  )

  layer(TestServer.layer({ env: { AUTH_TOKENS: "example-token" } }), { excludeTestServices: true })(
    "clients and auth",
    (it) => {
      it.effect("examples/client sends --token, and fails without it", () =>
        Effect.gen(function*() {
          const { port } = yield* TestServer.urls
          const [withToken, withoutToken] = yield* Effect.all([
            run("examples/client/main.ts", [`127.0.0.1:${port}`, "--token", "example-token"]),
            run("examples/client/main.ts", [`127.0.0.1:${port}`])
          ], { concurrency: "unbounded" })
          expect(withToken.code, withToken.output).toBe(0)
          expect(withoutToken.code, withoutToken.output).toBe(1)
          expect(withoutToken.output).toContain("401")
        }), { timeout: 40_000 })
    }
  )

  it.live("examples/client exits 1 when nothing listens on the port", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const { code, output } = yield* run("examples/client/main.ts", [`127.0.0.1:${port}`])
      expect(code, output).toBe(1)
      expect(output).toContain(`Could not connect to ws://127.0.0.1:${port}/ws`)
      expect(output).toContain("ECONNREFUSED")
    }), { timeout: 40_000 })

  describe("custom-tool", () => {
    it.scopedLive("serves its own route and tool next to AIBase's, and stops cleanly on SIGTERM", () =>
      Effect.gen(function*() {
        const app = yield* start("examples/custom-tool/main.ts", [], {
          PORT: "0",
          HOST: "127.0.0.1",
          LLM_PROVIDER: "offline",
          LOG_FORMAT: "json"
        })
        const match = yield* waitForOutput(app, /listening on http:\/\/127\.0\.0\.1:(\d+)/)
        const port = Number(match[1])

        const hello = yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/hello`).then((r) => r.json()))
        const decoded = Schema.decodeUnknownSync(Hello)(hello)
        expect(decoded.tools).toContain("word_count")

        const client = yield* WsClient.connect(`ws://127.0.0.1:${port}/ws`)
        const [tools] = yield* client.request({ type: "tools_list", request_id: "t1", payload: {} })
        if (tools?.type !== "tools_list_response") return expect.fail(JSON.stringify(tools))
        const wordCount = tools.data.tools.find((tool) => tool.name === "word_count")
        expect(wordCount?.parameters).toMatchObject({ type: "object", required: ["text"] })

        const [result] = yield* client.request({
          type: "tool_execute",
          request_id: "x1",
          payload: {
            tool_call: {
              id: "call_wc",
              type: "function",
              function: { name: "word_count", arguments: JSON.stringify({ text: "the cat and the hat. Yes!" }) }
            }
          }
        })
        if (result?.type !== "tool_execute_response") return expect.fail(JSON.stringify(result))
        expect(result.data.is_error).toBe(false)
        expect(JSON.parse(result.data.content)).toMatchObject({ words: 6, unique_words: 5, sentences: 2 })
        yield* client.close()

        app.process.kill("SIGTERM")
        const code = yield* app.exited
        expect(code, app.output()).toBe(0)
        expect(app.output()).toContain("Shutting down")
      }), { timeout: 40_000 })
  })
})
