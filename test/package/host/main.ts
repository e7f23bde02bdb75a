/**
 * A host application of the packed `aibase`, compiled and run by
 * Package.test.ts in a temporary project: it composes AIBase's server Layer
 * under its own configuration, answers one GET /health and one ping over
 * /ws, prints OK and exits. It imports only the package's public entry
 * points, as a user's program would.
 */
import { HttpClient, HttpClientResponse, HttpServer, Socket } from "@effect/platform"
import { NodeHttpClient, NodeRuntime, NodeSocket } from "@effect/platform-node"
import { AiBaseServer, AppConfig } from "aibase"
import { ConfigProvider, Console, Deferred, Effect, Layer, Option, Schema } from "effect"

// The host's own configuration, not the process environment: loopback, a
// random port, the offline model and no database.
const configuration = ConfigProvider.fromMap(
  new Map([
    ["SERVER_HOST", "127.0.0.1"],
    ["SERVER_PORT", "0"],
    ["LLM_PROVIDER", "offline"],
    ["DB_TYPE", "none"]
  ])
)

const Health = Schema.Struct({ status: Schema.Literal("ok") })
const Pong = Schema.parseJson(Schema.Struct({ type: Schema.Literal("pong"), request_id: Schema.Literal("host-ping") }))
const decodePong = Schema.decodeUnknownOption(Pong)

const ping = (url: string) =>
  Effect.gen(function*() {
    const socket = yield* Socket.makeWebSocket(url)
    const pong = yield* Deferred.make<void>()
    // Other frames (if the server sends any first) are skipped.
    yield* socket.runRaw((data) =>
      Option.isSome(decodePong(typeof data === "string" ? data : new TextDecoder().decode(data)))
        ? Deferred.succeed(pong, undefined)
        : Effect.void
    ).pipe(Effect.forkScoped)
    const write = yield* socket.writer
    yield* write(JSON.stringify({ type: "ping", request_id: "host-ping" }))
    yield* Deferred.await(pong)
  }).pipe(Effect.scoped)

const program = Effect.gen(function*() {
  const server = yield* HttpServer.HttpServer
  if (server.address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP address")
  const origin = `127.0.0.1:${server.address.port}`

  const health = yield* HttpClient.get(`http://${origin}/health`).pipe(
    Effect.flatMap(HttpClientResponse.schemaBodyJson(Health))
  )
  yield* ping(`ws://${origin}/ws`)
  yield* Console.log(`OK ${health.status}`)
})

const AppLayer = AiBaseServer.layer.pipe(Layer.provide(AppConfig.layer))

program.pipe(
  Effect.provide(AppLayer),
  Effect.provide([NodeHttpClient.layerUndici, NodeSocket.layerWebSocketConstructor]),
  Effect.withConfigProvider(configuration),
  Effect.timeout("20 seconds"),
  NodeRuntime.runMain
)
