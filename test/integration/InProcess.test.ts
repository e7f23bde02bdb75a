/**
 * AIBase without a transport, through the package's public entry point:
 * the chat engine with its tool loop in-process, an in-memory RPC client
 * over the same handlers as /ws and /rpc, a model swapped in with one
 * `Layer.provide`, and a server whose teardown does not wait on the clock.
 */
import { HttpServer } from "@effect/platform"
import { RpcTest } from "@effect/rpc"
import { describe, expect, it, layer } from "@effect/vitest"
import {
  AiBaseRpcs,
  AiBaseServer,
  AppConfig,
  Chat,
  Handlers,
  Hub,
  OfflineModel,
  OpenAi,
  Telemetry
} from "aibase"
import { Chunk, Effect, Layer, Scope, Stream } from "effect"
import * as WsClient from "../support/WsClient.js"

const env = { OFFLINE_WORD_DELAY_MS: "0", LOG_LEVEL: "warning", DB_TYPE: "none" }

/** The chat engine with the built-in tools and the offline model, configured with typed options. */
const ChatLive = Chat.layer({ model: "gpt-4o-mini", maxToolRounds: 3 }).pipe(
  Layer.provideMerge(Layer.mergeAll(AiBaseServer.layerTools, OfflineModel.layer({ wordDelay: 0 }))),
  Layer.provide(AppConfig.layerFromEnv(env))
)

/** A model of the host's own, under its own provider name. */
const HostModel = Layer.effect(
  OpenAi,
  Effect.map(OfflineModel.make({ wordDelay: 0 }), (offline) => OpenAi.of({ ...offline, provider: "host-model", baseUrl: undefined }))
)

describe("the chat engine in-process", () => {
  it.layer(ChatLive)((it) => {
    it.effect("runs a completion with the tool loop, whole and streamed", () =>
      Effect.gen(function*() {
        const chat = yield* Chat
        expect(chat.defaults.model).toBe("gpt-4o-mini")
        const request = {
          messages: [{ role: "user" as const, content: "what is 6*7?" }],
          tools: "registry" as const,
          auto_execute_tools: true
        }
        const whole = yield* chat.complete(request)
        expect(whole.tool_rounds?.[0]?.executions[0]?.tool_call.function.name).toBe("calculator")
        expect(whole.tool_rounds?.[0]?.executions[0]?.result.content).toContain("42")
        expect(whole.choices[0]?.message.content).toContain("42")

        const events = Chunk.toReadonlyArray(yield* Stream.runCollect(chat.stream(request)))
        expect(events.filter((event) => event._tag === "tool_execution")).toHaveLength(1)
        const end = events.at(-1)
        expect(end?._tag).toBe("chat_completion_stream_end")
        if (end?._tag === "chat_completion_stream_end") expect(end.data.tool_rounds).toHaveLength(1)
      }))
  })
})

describe("an in-memory RPC client over the handlers", () => {
  const HandlersLive = Handlers.layer.pipe(
    Layer.provideMerge(Chat.layer({ model: "gpt-4o-mini" })),
    Layer.provideMerge(Telemetry.layer({ requestLog: false })),
    Layer.provideMerge(Layer.mergeAll(AiBaseServer.layerTools, HostModel, AiBaseServer.layerNoLedger)),
    // Services take typed options; AppConfig is read where the standalone server is assembled.
    Layer.provideMerge(Hub.layer({ maxConnections: 10 })),
    Layer.provide(AppConfig.layerFromEnv(env))
  )

  it.layer(HandlersLive)((it) => {
    it.scoped("answers every kind of request, streams included, without a socket", () =>
      Effect.gen(function*() {
        const client = yield* RpcTest.makeClient(AiBaseRpcs)
        const pong = yield* client.Ping()
        expect(typeof pong.timestamp).toBe("string")
        const completion = yield* client.ChatCompletion({ messages: [{ role: "user", content: "hello" }] })
        expect(completion.choices[0]?.message.role).toBe("assistant")
        const events = Chunk.toReadonlyArray(
          yield* Stream.runCollect(client.ChatCompletionStream({ messages: [{ role: "user", content: "hello" }] }))
        )
        expect(events.at(-1)?._tag).toBe("chat_completion_stream_end")
        const error = yield* Effect.flip(client.ChatCompletion({ messages: [{ role: "user", content: "offline:fail:rate_limit" }] }))
        expect(error.category).toBe("rate_limit")
        const tools = yield* client.ToolsList()
        expect(tools.tools.map((tool) => tool.name)).toContain("calculator")
      }))
  })
})

describe("swapping the model", () => {
  // The services take the model from outside: providing the host's is all it takes.
  // One AppConfig for the services and the server: a free port on loopback, never the default 8080.
  const Services = AiBaseServer.layerServices.pipe(
    Layer.provide(HostModel),
    Layer.provideMerge(AppConfig.layerFromEnv({ ...env, SERVER_HOST: "127.0.0.1", SERVER_PORT: "0" }))
  )
  const ServerOnPort = AiBaseServer.layerServer.pipe(Layer.provideMerge(Services))

  it.layer(ServerOnPort, { timeout: 30_000 })((it) => {
    it.effect("serves the host's model, and /info names it truthfully", () =>
      Effect.gen(function*() {
        expect((yield* OpenAi).provider).toBe("host-model")
        const server = yield* HttpServer.HttpServer
        const port = server.address._tag === "TcpAddress" ? server.address.port : 0
        const info = yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/info`).then((r) => r.json()))
        expect(info).toMatchObject({ provider: "host-model", offline: false })
      }))
  })
})

describe("a server under the TestClock", () => {
  const ServerOnPort = AiBaseServer.layerServer.pipe(
    Layer.provideMerge(AiBaseServer.layerServices.pipe(Layer.provide(AiBaseServer.layerModel))),
    Layer.provideMerge(AppConfig.layerFromEnv({ ...env, SERVER_HOST: "127.0.0.1", SERVER_PORT: "0", SHUTDOWN_GRACE_SECONDS: "1" }))
  )

  // @effect/vitest's `layer` runs the tests and the teardown under the TestClock, which never advances on its own.
  layer(ServerOnPort, { timeout: 30_000 })((it) => {
    it.effect("shuts down with a client still connected, without waiting on the clock", () =>
      Effect.gen(function*() {
        const server = yield* HttpServer.HttpServer
        const port = server.address._tag === "TcpAddress" ? server.address.port : 0
        // Left open on purpose (a scope that outlives the test): the layer's teardown must close it.
        const client = yield* WsClient.connect(`ws://127.0.0.1:${port}/ws`).pipe(Effect.provideService(Scope.Scope, yield* Scope.make()))
        const [pong] = yield* client.request({ type: "ping", request_id: "p" })
        expect(pong?.type).toBe("pong")
        expect((yield* Hub).unsafeStats().clients).toBe(1)
      }))
  })
})
