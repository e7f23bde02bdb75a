/**
 * AIBase's public API: the services and their Layers, the chat engine and
 * the RpcGroup's handlers (for in-process use and in-memory RPC clients),
 * the RpcGroup and its schemas, the tool-definition helper, the error
 * classes and the /ws protocol types. Everything else in src/ is internal.
 *
 * @example
 * ```ts
 * import { AiBaseServer, AppConfig, DotEnv } from "aibase"
 * Layer.launch(AiBaseServer.layer.pipe(Layer.provide(AppConfig.layer), Layer.provide(DotEnv.layer())))
 * ```
 */

// configuration
export { AppConfig, type AppConfigShape } from "./config/AppConfig.js"
export * as DotEnv from "./config/DotEnv.js"
export * as Logging from "./config/Logging.js"

// services
export { Database, DatabaseError, type DatabaseOptions, type DatabaseShape } from "./db/Database.js"
export { Ledger, type LedgerOptions, type LedgerStats } from "./ledger/Ledger.js"
export { ResumableStreams, type ResumableStreamsOptions } from "./resume/ResumableStreams.js"
export { ConnectionRefused, Hub, type Membership, type Stats, type Transport } from "./hub/Hub.js"
export * as OfflineModel from "./openai/OfflineModel.js"
export { OpenAi } from "./openai/OpenAi.js"
export * as OpenAiSdk from "./openai/OpenAiSdk.js"
export * as Provider from "./openai/Provider.js"
export { Chat, type ChatOptions } from "./rpc/Chat.js"
export * as Handlers from "./rpc/Handlers.js"
export * as Push from "./stream/Push.js"
export * as BuiltinTools from "./tools/builtin/BuiltinTools.js"
export * as Tool from "./tools/Tool.js"
export { ToolRegistry } from "./tools/ToolRegistry.js"

// observability
export { Prometheus, type PrometheusOptions } from "./observability/Prometheus.js"
export { Telemetry, type TelemetryOptions } from "./observability/Telemetry.js"
export * as Tracing from "./observability/Tracing.js"

// the server
export * as AiBaseServer from "./server/AiBaseServer.js"
export * as Auth from "./server/Auth.js"
export { Mount } from "./server/Mount.js"

// protocol (also available alone as "aibase/protocol")
export * from "./protocol/index.js"
