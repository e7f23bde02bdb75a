/**
 * AIBase assembled: its routes, the default services behind them, and the
 * Node HTTP server with graceful shutdown. Each piece is a Layer, so an
 * application can take the whole server, or mount `routes` in its own
 * HttpRouter, and replace any service (OpenAi, ToolRegistry, Hub) with its own.
 */
import { HttpLayerRouter, HttpServer } from "@effect/platform"
import { type ConfigError, Effect, Layer } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { Database, type DatabaseError } from "../db/Database.js"
import { Hub } from "../hub/Hub.js"
import { Ledger } from "../ledger/Ledger.js"
import { ResumableStreams } from "../resume/ResumableStreams.js"
import { Prometheus } from "../observability/Prometheus.js"
import { ConsoleSeries } from "../observability/ConsoleSeries.js"
import { Telemetry } from "../observability/Telemetry.js"
import * as Tracing from "../observability/Tracing.js"
import { OpenAi } from "../openai/OpenAi.js"
import * as Provider from "../openai/Provider.js"
import { Chat } from "../rpc/Chat.js"
import * as Handlers from "../rpc/Handlers.js"
import * as BuiltinTools from "../tools/builtin/BuiltinTools.js"
import { ToolRegistry } from "../tools/ToolRegistry.js"
import * as Auth from "./Auth.js"
import * as HttpRoutes from "./HttpRoutes.js"
import * as ConsoleRoute from "./ConsoleRoute.js"
import * as MetricsRoute from "./MetricsRoute.js"
import { Mount } from "./Mount.js"
import * as NodeServer from "./NodeServer.js"
import * as RpcRoute from "./RpcRoute.js"
import * as UsageRoute from "./UsageRoute.js"
import { WebSocketUpgrade } from "./WebSocketUpgrade.js"
import * as WsRoute from "./WsRoute.js"

/** The chat engine with the configured defaults (OPENAI_MODEL, OPENAI_TEMPERATURE, OPENAI_MAX_TOKENS). */
export const layerChat: Layer.Layer<Chat, never, AppConfig | OpenAi | ToolRegistry> = Layer.unwrapEffect(
  Effect.map(AppConfig, ({ openai }) =>
    Chat.layer({ model: openai.model, temperature: openai.temperature, maxTokens: openai.maxTokens }))
)

/** /metrics, behind AUTH_TOKENS unless METRICS_PUBLIC=true. */
const metricsRoute = Layer.unwrapEffect(Effect.map(AppConfig, (config) =>
  config.metricsPublic ? MetricsRoute.layer : MetricsRoute.layer.pipe(Layer.provide(Auth.layer))
))

/**
 * Every AIBase route (/ws, /rpc, /health, /info, /usage, /metrics, the
 * console), for an HttpRouter, at the root or under the `Mount` provided
 * (see `routesAt`). AIBase's auth guards AIBase's routes only, /health and
 * the console's page excepted; the host's routes stay as the host made
 * them (see `Auth.middleware`). Needs AppConfig, Hub, OpenAi, ToolRegistry,
 * Database, Ledger, ResumableStreams, Telemetry and Prometheus.
 */
export const routes = Layer.mergeAll(
  HttpRoutes.layerHealth,
  // The page is open, its data behind auth (see ConsoleRoute).
  ConsoleRoute.layer,
  Layer.mergeAll(WsRoute.layer, RpcRoute.layer, HttpRoutes.layerInfo, UsageRoute.layer).pipe(Layer.provide(Auth.layer)),
  metricsRoute
).pipe(
  Layer.provide([Handlers.layer, WebSocketUpgrade.layerFromAppConfig]),
  Layer.provide(layerChat)
)

/** `routes` under a path prefix: `routesAt("/ai")` serves /ai/ws, /ai/health..., and /info says so. */
export const routesAt = (prefix: string) => routes.pipe(Layer.provide(Mount.layer(prefix)))

/** The tool registry with the built-in tools. */
export const layerTools: Layer.Layer<ToolRegistry, never, AppConfig> = BuiltinTools.layer.pipe(
  Layer.provideMerge(ToolRegistry.layerFromAppConfig)
)

/**
 * The database chosen by DB_TYPE, the request ledger written to it, and the
 * resumable streams kept in it.
 */
export const layerLedger: Layer.Layer<
  Ledger | Database | ResumableStreams,
  DatabaseError | ConfigError.ConfigError,
  Hub
> = Layer.merge(Ledger.layerConfig, ResumableStreams.layerConfig).pipe(
  Layer.provideMerge(Database.layerConfig)
)

/**
 * No database: nothing is recorded, /usage answers 404, and resumable
 * streams live in memory only (what DB_TYPE=none gives).
 */
export const layerNoLedger: Layer.Layer<Ledger | Database | ResumableStreams, never, Hub> = Layer.merge(
  Ledger.layer(),
  ResumableStreams.layer()
).pipe(
  Layer.provideMerge(Layer.orDie(Database.layer({ type: "none" })))
)

/**
 * Metrics (Telemetry, served by Prometheus at /metrics), the request log
 * (REQUEST_LOG) and, with OTEL_EXPORTER_OTLP_ENDPOINT, traces.
 */
export const layerObservability: Layer.Layer<
  Telemetry | Prometheus | ConsoleSeries,
  ConfigError.ConfigError,
  OpenAi | Hub
> = Layer.merge(Telemetry.layerConfig, Prometheus.layerConfig).pipe(Layer.provideMerge(ConsoleSeries.layer()))

/**
 * The default services: Hub, the tools, the database and the ledger, and
 * the model, which it takes from outside and passes on: provide
 * `layerModel` (the provider chosen by LLM_PROVIDER) or your own
 * `OpenAi` layer, `layerServices.pipe(Layer.provide(MyModel))`. Without a
 * model the composition does not typecheck, so none is picked silently.
 */
export const layerServices: Layer.Layer<
  Hub | ToolRegistry | OpenAi | Ledger | Database | ResumableStreams,
  DatabaseError | ConfigError.ConfigError,
  AppConfig | OpenAi
> = Layer.mergeAll(
  layerTools,
  // The model given, passed on to the routes.
  Layer.effect(OpenAi, OpenAi),
  layerLedger
).pipe(Layer.provideMerge(Hub.layerFromAppConfig))

/** The model chosen by LLM_PROVIDER: the openai SDK, or the built-in offline model. */
export const layerModel: Layer.Layer<OpenAi, ConfigError.ConfigError, AppConfig> = Provider.layer

/** The Node HTTP server on SERVER_HOST:SERVER_PORT. */
export const layerHttpServer = NodeServer.layerConfig

/**
 * Routes WebSocket upgrades for AIBase's endpoints straight from the Node
 * server to `WebSocketUpgrade`, past the router (see `NodeServer`).
 */
const layerUpgrades = Layer.scopedDiscard(Effect.gen(function*() {
  const server = yield* NodeServer.NodeServer
  const upgrader = yield* WebSocketUpgrade
  yield* Effect.acquireRelease(
    Effect.sync(() => server.setUpgradeHandler(upgrader.handle)),
    () => Effect.sync(() => server.setUpgradeHandler(undefined))
  )
})).pipe(Layer.provide(WebSocketUpgrade.layerFromAppConfig)) // the same instance as the routes' (layers are shared by reference)

/**
 * Drains the Hub when the server shuts down (see `Hub.drain`). It must be
 * released before the served app, so that /health answers 503 and in-flight
 * requests can finish while the server still listens: build it after the
 * app with `withGracefulShutdown`.
 */
export const layerGracefulShutdown: Layer.Layer<never, never, HttpServer.HttpServer | AppConfig | Hub> = Layer
  .scopedDiscard(Effect.gen(function*() {
    yield* HttpServer.HttpServer
    const config = yield* AppConfig
    const hub = yield* Hub
    yield* Effect.addFinalizer(() => hub.drain(config.server.shutdownGrace))
  }))

const logStartup = Layer.effectDiscard(Effect.gen(function*() {
  const server = yield* HttpServer.HttpServer
  const config = yield* AppConfig
  const openai = yield* OpenAi
  const address = server.address._tag === "TcpAddress"
    ? `http://${server.address.hostname}:${server.address.port}`
    : server.address.path
  yield* Effect.logInfo(`AIBase listening on ${address} (WebSocket: ${WsRoute.PATH}, RPC: ${RpcRoute.PATH}, console: /)`).pipe(
    Effect.annotateLogs({ provider: openai.provider, model: config.openai.model })
  )
  if (openai.provider === "offline") {
    yield* Effect.logWarning(
      "Using the built-in offline model: replies are canned. Set OPENAI_API_KEY (or LLM_PROVIDER) for a real model"
    )
  }
}))

/**
 * Adds the graceful drain to a served app (the result of
 * `HttpLayerRouter.serve`, mounting `routes` next to the app's own).
 */
export const withGracefulShutdown = <A, E, R>(served: Layer.Layer<A, E, R>) =>
  layerGracefulShutdown.pipe(Layer.provideMerge(served))

/** The server with its routes and observability; needs AppConfig and the services (see `layerServices`). */
export const layerServer = logStartup.pipe(
  // "listening" is logged once the routes answer: the socket listens as soon as the HTTP server is built.
  Layer.provideMerge(
    withGracefulShutdown(HttpLayerRouter.serve(routes, { disableLogger: true, disableListenLog: true })).pipe(
      Layer.merge(layerUpgrades)
    )
  ),
  Layer.provideMerge(layerHttpServer),
  Layer.provideMerge(layerObservability)
)

/**
 * Everything, from AppConfig. The tracer (OTEL_EXPORTER_OTLP_ENDPOINT) is
 * outermost: built before every other layer, so they all trace through it,
 * and released last, so that its buffered spans are sent at shutdown.
 */
export const layer = layerServer.pipe(
  Layer.provide(layerServices),
  Layer.provide(layerModel),
  Layer.provide(Tracing.layerConfig)
)
