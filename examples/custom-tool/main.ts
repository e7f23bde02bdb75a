/** An application that embeds AIBase: its own route and its own tool, next to AIBase's routes, in one server. */
//
//   PORT=8080 node --import tsx examples/custom-tool/main.ts
//
// Configuration comes from the environment, then .env (PORT, HOST, and every
// AIBase variable such as OPENAI_API_KEY or LLM_PROVIDER). PORT=0 picks a free port.
import { HttpLayerRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { AiBaseServer, AppConfig, DotEnv, Logging, OpenAi, Tool, ToolRegistry } from "aibase"
import { Cause, Config, Console, Effect, Layer, Schema } from "effect"
import { createServer } from "node:http"

// ---------------------------------------------------------------------------
// the app's own tool

/**
 * `word_count`: the model (or a client's tool_execute) calls it with JSON
 * arguments, which AIBase decodes with `parameters` before `execute` runs;
 * the JSON Schema the model sees is derived from the same Schema.
 */
const WordCount = Tool.make({
  name: "word_count",
  description: "Counts the words, characters and sentences of a text, and lists its most frequent words",
  parameters: Schema.Struct({
    text: Schema.String.pipe(Schema.maxLength(100_000)).annotations({ description: "The text to analyse" }),
    top: Schema.optionalWith(
      Schema.Int.pipe(Schema.between(0, 20)).annotations({ description: "How many frequent words to list (default 3)" }),
      { default: () => 3 }
    )
  }),
  execute: ({ text, top }) => {
    const words = text.toLowerCase().match(/[\p{L}\p{N}']+/gu) ?? []
    // A ToolError goes back to the model as a result with is_error: true, not as a failed request.
    if (words.length === 0) return Effect.fail(new Tool.ToolError({ message: "The text has no words to count" }))
    const counts = new Map<string, number>()
    for (const word of words) counts.set(word, (counts.get(word) ?? 0) + 1)
    const frequent = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, top)
    return Effect.succeed(JSON.stringify({
      words: words.length,
      unique_words: counts.size,
      characters: text.length,
      sentences: (text.match(/[^.!?]+[.!?]+/g) ?? [text]).length,
      most_frequent: Object.fromEntries(frequent)
    }))
  }
})

// ---------------------------------------------------------------------------
// the app's own route

/** GET /hello: the app's JSON endpoint, using an AIBase service (the tool registry) like any other. */
const HelloRoute = HttpLayerRouter.add(
  "GET",
  "/hello",
  Effect.gen(function*() {
    const registry = yield* ToolRegistry
    const tools = yield* registry.definitions
    return HttpServerResponse.unsafeJson({
      message: "Hello from an app that embeds AIBase",
      tools: tools.map((tool) => tool.name),
      endpoints: ["/hello", "/ws", "/rpc", "/health", "/info"]
    })
  })
)

// ---------------------------------------------------------------------------
// composition

/** The app's routes and AIBase's, in one router (AIBase's auth middleware covers them all). */
const Routes = Layer.mergeAll(HelloRoute, AiBaseServer.routes)

/**
 * AIBase's services, with the app's tool registered in the same ToolRegistry,
 * and the model chosen by LLM_PROVIDER (an app can provide its own OpenAi layer instead).
 */
const Services = Tool.toLayer(WordCount).pipe(
  Layer.provideMerge(AiBaseServer.layerServices),
  Layer.provide(AiBaseServer.layerModel)
)

/** The app's own HTTP server settings, read under the same env + .env provider as AIBase's. */
const HttpServerLive = NodeHttpServer.layerConfig(createServer, {
  // Not Config.port: it rejects 0, which asks the OS for a free port.
  port: Config.integer("PORT").pipe(
    Config.validate({ message: "PORT must be 0-65535", validation: (port) => port >= 0 && port <= 65535 }),
    Config.withDefault(8080)
  ),
  host: Config.string("HOST").pipe(Config.withDefault("127.0.0.1"))
})

const ListenLog = Layer.effectDiscard(Effect.gen(function*() {
  const { address } = yield* HttpServer.HttpServer
  const { provider } = yield* OpenAi
  const where = address._tag === "TcpAddress" ? `http://${address.hostname}:${address.port}` : address.path
  yield* Effect.logInfo(`custom-tool app listening on ${where} (try GET /hello; AIBase on /ws and /rpc)`).pipe(
    Effect.annotateLogs({ provider })
  )
}))

// withGracefulShutdown drains AIBase's requests before the server stops listening.
const App = AiBaseServer.withGracefulShutdown(
  HttpLayerRouter.serve(Routes, { disableLogger: true, disableListenLog: true })
).pipe(
  Layer.merge(ListenLog),
  Layer.provideMerge(HttpServerLive),
  // Metrics (/metrics), the request log and, with OTEL_EXPORTER_OTLP_ENDPOINT, traces.
  Layer.provide(AiBaseServer.layerObservability),
  Layer.provide(Services),
  Layer.provide(Logging.layer),
  Layer.provide(AppConfig.layer),
  Layer.provide(DotEnv.layer())
)

// Runs until SIGINT/SIGTERM; in-flight requests get SHUTDOWN_GRACE_SECONDS to finish first.
// A startup failure (bad config, port in use) is reported once, and exits with code 1.
Layer.launch(App).pipe(
  Effect.tapErrorCause((cause) => Cause.isInterruptedOnly(cause) ? Effect.void : Console.error(Cause.pretty(cause))),
  // The app installs its own logger (LOG_FORMAT), so runMain must not add its pretty one too.
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true })
)
