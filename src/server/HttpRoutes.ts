/**
 * GET /health (public) and GET /info (behind the auth middleware when it is
 * provided), at the paths of the `Mount`.
 */
import { HttpLayerRouter, HttpServerResponse } from "@effect/platform"
import { Clock, Duration, Effect, Layer, Schema } from "effect"
import { createRequire } from "node:module"
import { AppConfig } from "../config/AppConfig.js"
import { Database } from "../db/Database.js"
import { Hub } from "../hub/Hub.js"
import { Ledger } from "../ledger/Ledger.js"
import { OpenAi } from "../openai/OpenAi.js"
import { WireNames } from "../protocol/Rpcs.js"
import { ToolRegistry } from "../tools/ToolRegistry.js"
import * as Mount from "./Mount.js"
import type { MountShape } from "./Mount.js"

const PackageJson = Schema.Struct({ name: Schema.String, version: Schema.String })

/** The package's name and version, read from package.json next to src/ or dist/. */
export const packageInfo = Schema.decodeUnknownSync(PackageJson)(createRequire(import.meta.url)("../../package.json"))

/** A URL without user info or query, which is where credentials hide. */
export const publicUrl = (url: string): string => {
  const parsed = new URL(url)
  parsed.username = ""
  parsed.password = ""
  parsed.search = ""
  parsed.hash = ""
  return parsed.href.replace(/\/+$/, "")
}

/** AIBase's endpoints at the root; `endpointsAt` gives them under a mount. */
export const Endpoints = {
  websocket: "/ws",
  rpc: "/rpc",
  health: "/health",
  info: "/info",
  usage: "/usage",
  metrics: "/metrics",
  console: "/"
} as const

/** The endpoints under a mount, as /info reports them. */
export const endpointsAt = (mount: MountShape): Record<keyof typeof Endpoints, Mount.Path> => ({
  websocket: Mount.path(mount, Endpoints.websocket),
  rpc: Mount.path(mount, Endpoints.rpc),
  health: Mount.path(mount, Endpoints.health),
  info: Mount.path(mount, Endpoints.info),
  usage: Mount.path(mount, Endpoints.usage),
  metrics: Mount.path(mount, Endpoints.metrics),
  console: Mount.path(mount, "/")
})

/** GET /health: never behind auth (load balancers and orchestrators call it). */
export const layerHealth = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const hub = yield* Hub
  const mount = yield* Mount.Mount
  const startedAt = yield* Clock.currentTimeMillis

  yield* router.add(
    "GET",
    Mount.path(mount, Endpoints.health),
    Effect.gen(function*() {
      const stats = yield* hub.stats
      if (stats.draining) return HttpServerResponse.unsafeJson({ status: "shutting_down" }, { status: 503 })
      const now = yield* Clock.currentTimeMillis
      return HttpServerResponse.unsafeJson({
        status: "ok",
        clients: stats.clients,
        in_flight: stats.inFlight,
        uptime_seconds: Math.floor((now - startedAt) / 1000)
      })
    })
  )

}))

/** GET /info. */
export const layerInfo = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const config = yield* AppConfig
  const hub = yield* Hub
  const openai = yield* OpenAi
  const registry = yield* ToolRegistry
  const database = yield* Database
  const ledger = yield* Ledger
  const mount = yield* Mount.Mount
  const endpoints = endpointsAt(mount)

  yield* router.add(
    "GET",
    endpoints.info,
    Effect.gen(function*() {
      const tools = yield* registry.definitions
      const stats = yield* hub.stats
      return HttpServerResponse.unsafeJson({
        name: packageInfo.name,
        version: packageInfo.version,
        provider: openai.provider,
        offline: openai.provider === "offline",
        base_url: openai.baseUrl === undefined ? null : publicUrl(openai.baseUrl),
        models: {
          chat: config.openai.model,
          embedding: config.openai.embeddingModel,
          max_tokens: config.openai.maxTokens,
          temperature: config.openai.temperature
        },
        limits: {
          ws_max_message_bytes: config.limits.maxMessageBytes,
          ws_max_in_flight: config.limits.maxInFlight,
          ws_max_buffered_bytes: config.limits.maxBufferedBytes,
          ws_ping_interval_seconds: Duration.toSeconds(config.limits.pingInterval),
          max_connections: config.limits.maxConnections,
          max_concurrent_streams: config.limits.maxConcurrentStreams,
          max_event_loop_delay_ms: Duration.toMillis(config.limits.maxEventLoopDelay),
          openai_timeout_seconds: Duration.toSeconds(config.openai.timeout),
          openai_max_retries: config.openai.maxRetries,
          tool_timeout_seconds: Duration.toSeconds(config.toolTimeout),
          shutdown_grace_seconds: Duration.toSeconds(config.server.shutdownGrace)
        },
        // The type only: a location could carry credentials.
        database: { type: database.type, usage_recorded: ledger.enabled, store_content: ledger.storesContent },
        auth_required: config.authTokens.length + config.adminTokens.length > 0,
        endpoints,
        request_types: [...Object.values(WireNames).map((names) => names.request), "cancel"],
        tools: tools.map((tool) => tool.name),
        clients: stats.clients
      })
    })
  )
}))
