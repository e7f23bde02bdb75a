/**
 * /rpc: the same requests through @effect/rpc, with typed errors, and the
 * same auth, limits, Hub accounting and cancellation as /ws.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, ManagedRuntime, Stream } from "effect"
import { Behaviour, FakeOpenAIService, textChunks } from "../support/FakeOpenAI.js"
import { rpcClient } from "../support/RpcTestClient.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"


const clients = (http: string) =>
  Effect.promise(() => fetch(`${http}/health`).then((r) => r.json() as Promise<{ clients: number }>)).pipe(
    Effect.map((health) => health.clients)
  )

describe("/rpc", () => {
  layer(TestServer.layer({ env: { WS_MAX_IN_FLIGHT: "2", OFFLINE_WORD_DELAY_MS: "30" } }), { excludeTestServices: true })(
    "offline model",
    (it) => {
      it.scoped("serves every request of the group with full types", () =>
        Effect.gen(function*() {
          const { port } = yield* TestServer.urls
          const client = yield* rpcClient(`ws://127.0.0.1:${port}/rpc`)
          const pong = yield* client.Ping()
          expect(Date.parse(pong.timestamp)).not.toBeNaN()
          const completion = yield* client.ChatCompletion({ messages: [{ role: "user", content: "Hi" }] })
          expect(completion.choices[0]?.message.content).toContain("[offline model]")
          const events = yield* client.ChatCompletionStream({
            messages: [{ role: "user", content: "What is 2+3*4?" }],
            tools: "registry",
            auto_execute_tools: true
          }).pipe(Stream.runCollect)
          const tags = [...events].map((event) => event._tag)
          expect(tags).toContain("tool_execution")
          expect(tags.at(-1)).toBe("chat_completion_stream_end")
          const end = [...events].at(-1)
          if (end?._tag === "chat_completion_stream_end") expect(end.data.content).toContain("14")
          const embeddings = yield* client.Embedding({ input: ["a", "b"], dimensions: 8 })
          expect(embeddings.data.map((d) => d.embedding.length)).toEqual([8, 8])
          const tools = yield* client.ToolsList()
          expect(tools.tools.map((tool) => tool.name)).toContain("calculator")
          const result = yield* client.ToolExecute({
            tool_call: { id: "c1", type: "function", function: { name: "calculator", arguments: "{\"expression\":\"6*7\"}" } }
          })
          expect(result).toMatchObject({ tool_call_id: "c1", is_error: false })
          expect(result.content).toContain("42")
        }))

      it.scoped("errors arrive as typed values with their category", () =>
        Effect.gen(function*() {
          const { port } = yield* TestServer.urls
          const client = yield* rpcClient(`ws://127.0.0.1:${port}/rpc`)
          const error = yield* client.ChatCompletion({ messages: [{ role: "user", content: "offline:fail:rate_limit" }] }).pipe(
            Effect.flip
          )
          expect(error._tag).toBe("RateLimitError")
          if (error._tag !== "RateLimitError") return
          expect(error.category).toBe("rate_limit")
          expect(error.retryable).toBe(true)
          const handled = yield* client.ChatCompletion({ messages: [{ role: "user", content: "offline:fail:authentication" }] })
            .pipe(
              Effect.as("no error"),
              Effect.catchTag("AuthenticationError", (e) => Effect.succeed(e.category))
            )
          expect(handled).toBe("authentication")
        }))

      it.scoped("connections count in /health; requests beyond WS_MAX_IN_FLIGHT are overloaded", () =>
        Effect.gen(function*() {
          const { http, port } = yield* TestServer.urls
          const client = yield* rpcClient(`ws://127.0.0.1:${port}/rpc`)
          yield* client.Ping()
          expect(yield* clients(http)).toBeGreaterThanOrEqual(1)
          // Offline streams take ~1 s at 30 ms a word, so two stay in flight.
          const long = { messages: [{ role: "user" as const, content: "please write a long answer" }] }
          const started = yield* Effect.all([Deferred.make<void>(), Deferred.make<void>()])
          const stream = (first: Deferred.Deferred<void>) =>
            client.ChatCompletionStream(long).pipe(Stream.tap(() => Deferred.succeed(first, undefined)), Stream.runCollect)
          const running = yield* Effect.forkScoped(Effect.all(started.map(stream), { concurrency: "unbounded" }))
          yield* Wait.awaitEvent(Effect.all(started.map(Deferred.await)), { message: "both streams to send their first event" })
          const third = yield* client.ChatCompletion(long).pipe(Effect.flip)
          expect(third._tag).toBe("OverloadedError")
          const finished = yield* Fiber.join(running)
          expect(finished.map((events) => [...events].at(-1)?._tag)).toEqual([
            "chat_completion_stream_end",
            "chat_completion_stream_end"
          ])
          expect(yield* client.Ping()).toBeTruthy()
        }))

      it.scoped("a frame over WS_MAX_MESSAGE_BYTES closes the /rpc socket too", () =>
        Effect.gen(function*() {
          const { port } = yield* TestServer.urls
          const raw = yield* WsClient.connect(`ws://127.0.0.1:${port}/rpc`)
          raw.send("x".repeat(2 * 1024 * 1024))
          expect((yield* raw.closed).code).toBe(1009)
        }))
    }
  )

  layer(TestServer.layer({ env: { AUTH_TOKENS: "rpc-token" } }), { excludeTestServices: true })("auth", (it) => {
    it.scoped("needs the token like /ws", () =>
      Effect.gen(function*() {
        const { port } = yield* TestServer.urls
        const refused = yield* Effect.flip(WsClient.connect(`ws://127.0.0.1:${port}/rpc`))
        expect(refused.message).toContain("401")
        const client = yield* rpcClient(`ws://127.0.0.1:${port}/rpc?token=rpc-token`)
        expect((yield* client.Ping()).timestamp).toBeTypeOf("string")
      }))
  })

  layer(TestServer.layerWithFakeUpstream(), { excludeTestServices: true })("against an upstream", (it) => {
    it.scoped("interrupting the client's stream aborts the upstream request", () =>
      Effect.gen(function*() {
        const fake = yield* FakeOpenAIService
        const { port } = yield* TestServer.urls
        const client = yield* rpcClient(`ws://127.0.0.1:${port}/rpc`)
        fake.enqueue(Behaviour.stream(textChunks("never ending story"), { stallAfter: 2 }))
        const first = yield* client.ChatCompletionStream({ messages: [{ role: "user", content: "go" }] }).pipe(
          Stream.take(1),
          Stream.runCollect
        )
        expect(first.length).toBe(1)
        const aborted = yield* fake.awaitAborted(1)
        expect(aborted).toHaveLength(1)
        yield* Wait.waitFor(() => fake.inFlightCount === 0, { message: "no upstream request in flight" })
      }))
  })
})

describe("/rpc at shutdown", () => {
  it.live("a request that outlives the grace period fails with a typed UnavailableError", () =>
    Effect.gen(function*() {
      // The server runs in its own runtime, so the test can shut it down under the client.
      const server = ManagedRuntime.make(
        TestServer.layer({ env: { SHUTDOWN_GRACE_SECONDS: "0.5", OFFLINE_WORD_DELAY_MS: "200" } })
      )
      const { port } = yield* Effect.promise(() => server.runPromise(TestServer.urls))
      const outcome = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* rpcClient(`ws://127.0.0.1:${port}/rpc`)
        const started = yield* Deferred.make<void>()
        const stream = yield* client.ChatCompletionStream({ messages: [{ role: "user", content: "a slow story" }] }).pipe(
          Stream.tap(() => Deferred.succeed(started, undefined)),
          Stream.runCollect,
          Effect.either,
          Effect.fork
        )
        yield* Wait.awaitEvent(Deferred.await(started), { message: "the stream's first event" })
        yield* Effect.promise(() => server.dispose())
        return yield* Fiber.join(stream)
      }))
      expect(outcome._tag).toBe("Left")
      if (outcome._tag === "Left") {
        expect(outcome.left._tag).toBe("UnavailableError")
        if (outcome.left._tag === "UnavailableError") expect(outcome.left.code).toBe("shutting_down")
      }
    }))
})
