/**
 * What a larger Effect app can do with AIBase, using only the package's
 * public entry point: mount its routes next to its own, add a tool with one
 * Layer, replace the model provider, and run and stop it all under its own
 * runtime.
 */
import { HttpLayerRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { AiBaseServer, AppConfig, Auth, Hub, OfflineModel, OpenAi, Tool } from "aibase"
import { Effect, Layer, ManagedRuntime, Schema } from "effect"
import { createServer } from "node:http"
import * as WsClient from "../support/WsClient.js"

/** The app's own route. */
const HelloRoute = HttpLayerRouter.add("GET", "/hello", HttpServerResponse.json({ hello: "from the app" }))

/** The app's own tool, added with one Layer. */
const Shout = Tool.make({
  name: "shout",
  description: "Upper-cases a text",
  parameters: Schema.Struct({ text: Schema.String }),
  execute: ({ text }) => Effect.succeed(text.toUpperCase())
})

/** The app's own model provider: every completion answers the same. */
const CannedModel = Layer.effect(
  OpenAi,
  Effect.map(OfflineModel.make({ wordDelay: "100 millis" }), (offline) =>
    OpenAi.of({
      ...offline,
      provider: "openai",
      baseUrl: "http://127.0.0.1:1/v1",
      createChatCompletion: (request) =>
        Effect.map(offline.createChatCompletion(request), (completion) => ({
          ...completion,
          choices: completion.choices.map((choice) => ({
            ...choice,
            message: { ...choice.message, content: "canned by the app" }
          }))
        }))
    }))
)

/** The app: its router serving its route and AIBase's, on its own server. */
const App = AiBaseServer.withGracefulShutdown(
  HttpLayerRouter.serve(Layer.mergeAll(HelloRoute, AiBaseServer.routes), { disableLogger: true })
).pipe(
  Layer.provideMerge(NodeHttpServer.layer(createServer, { host: "127.0.0.1", port: 0 })),
  Layer.provide(Tool.toLayer(Shout)),
  Layer.provide(AiBaseServer.layerObservability),
  Layer.provideMerge(Layer.mergeAll(AiBaseServer.layerTools, CannedModel, AiBaseServer.layerNoLedger)),
  Layer.provideMerge(Hub.layerFromAppConfig),
  Layer.provideMerge(AppConfig.layerFromEnv({ SHUTDOWN_GRACE_SECONDS: "1", OFFLINE_WORD_DELAY_MS: "100", LOG_LEVEL: "warning" })),
  Layer.orDie
)

const portOf = Effect.map(HttpServer.HttpServer, (server) => server.address._tag === "TcpAddress" ? server.address.port : 0)

describe("the public API", () => {
  it.live("an app mounts AIBase next to its own route, adds a tool, swaps the model, and shuts down cleanly", () =>
    Effect.gen(function*() {
      const runtime = ManagedRuntime.make(App)
      const port = yield* Effect.promise(() => runtime.runPromise(portOf))

      const hello = yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/hello`).then((r) => r.json()))
      expect(hello).toEqual({ hello: "from the app" })

      const closed = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* WsClient.connect(`ws://127.0.0.1:${port}/ws`)
        const [list] = yield* client.request({ type: "tools_list", request_id: "t" })
        if (list?.type !== "tools_list_response") return expect.fail(JSON.stringify(list))
        expect(list.data.tools.map((tool) => tool.name)).toEqual(
          expect.arrayContaining(["shout", "calculator", "get_weather", "get_current_time"])
        )
        const [shout] = yield* client.request({
          type: "tool_execute",
          request_id: "s",
          payload: { tool_call: { id: "1", type: "function", function: { name: "shout", arguments: "{\"text\":\"hi\"}" } } }
        })
        expect(shout?.type === "tool_execute_response" && shout.data).toEqual({ tool_call_id: "1", content: "HI", is_error: false })

        const [chat] = yield* client.request({
          type: "chat_completion",
          request_id: "c",
          payload: { messages: [{ role: "user", content: "hello" }] }
        })
        expect(chat?.type === "chat_completion_response" && chat.data.choices[0]?.message.content).toBe("canned by the app")

        // A stream that outlives the grace period is stopped with `unavailable`, then the socket closes with 1001.
        client.send({
          type: "chat_completion_stream",
          request_id: "running",
          payload: { messages: [{ role: "user", content: "a long story" }] }
        })
        yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "running"))
        const started = Date.now()
        yield* Effect.promise(() => runtime.dispose())
        expect(Date.now() - started).toBeLessThan(4000)
        // Its final frame was sent before the server stopped; wait for it to arrive rather than assume it has.
        const last = (yield* client.collect("running")).at(-1)
        expect(last?.type === "error" && last.data.category).toBe("unavailable")
        return yield* client.closed
      }))
      expect(closed.code).toBe(1001)
      const refused = yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/hello`).then(() => "served", () => "refused"))
      expect(refused).toBe("refused")
    }))

  it.live("an app mounts AIBase under a prefix next to its own /health; AIBase's auth covers AIBase's routes only", () =>
    Effect.gen(function*() {
      const token = "mount-token-0123456789"
      const HostHealth = HttpLayerRouter.add("GET", "/health", HttpServerResponse.json({ host: "healthy" }))
      // The host opts in to AIBase's auth for a route of its own.
      const HostPrivate = HttpLayerRouter.add("GET", "/private", HttpServerResponse.json({ secret: "ok" })).pipe(
        Layer.provide(Auth.middleware.layer)
      )
      const Mounted = HttpLayerRouter.serve(
        Layer.mergeAll(HostHealth, HelloRoute, HostPrivate, AiBaseServer.routesAt("/ai")),
        { disableLogger: true }
      ).pipe(
        Layer.provideMerge(NodeHttpServer.layer(createServer, { host: "127.0.0.1", port: 0 })),
        Layer.provide(AiBaseServer.layerObservability),
        Layer.provideMerge(Layer.mergeAll(AiBaseServer.layerTools, CannedModel, AiBaseServer.layerNoLedger)),
        Layer.provideMerge(Hub.layerFromAppConfig),
        Layer.provideMerge(AppConfig.layerFromEnv({ AUTH_TOKENS: token, OFFLINE_WORD_DELAY_MS: "0", LOG_LEVEL: "warning" })),
        Layer.orDie
      )
      yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(Mounted)
        const port = yield* portOf.pipe(Effect.provide(context))
        const get = (path: string, withToken = false) =>
          Effect.promise(async () => {
            const response = await fetch(`http://127.0.0.1:${port}${path}`, withToken ? { headers: { authorization: `Bearer ${token}` } } : {})
            return { status: response.status, body: await response.json() }
          })

        expect(yield* get("/health")).toEqual({ status: 200, body: { host: "healthy" } })
        expect(yield* get("/hello")).toEqual({ status: 200, body: { hello: "from the app" } })
        expect((yield* get("/ai/health")).status).toBe(200)
        expect((yield* get("/ai/info")).status).toBe(401)
        expect((yield* get("/private")).status).toBe(401)
        expect((yield* get("/private", true)).status).toBe(200)
        // The console's page is open under the prefix too, and resolves its assets there.
        const page = yield* Effect.promise(() => fetch(`http://127.0.0.1:${port}/ai/`).then(async (r) => ({ status: r.status, text: await r.text() })))
        expect(page.status).toBe(200)
        expect(page.text).toContain(`<base href="/ai/">`)
        const info = yield* get("/ai/info", true)
        expect(info.body).toMatchObject({
          endpoints: { websocket: "/ai/ws", rpc: "/ai/rpc", health: "/ai/health", info: "/ai/info", usage: "/ai/usage" }
        })

        const client = yield* WsClient.connect(`ws://127.0.0.1:${port}/ai/ws?token=${token}`)
        const [pong] = yield* client.request({ type: "ping", request_id: "p" })
        expect(pong?.type).toBe("pong")
        const refused = yield* Effect.flip(WsClient.connect(`ws://127.0.0.1:${port}/ai/ws`))
        expect(refused.message).toContain("401")
      }))
    }))
})
