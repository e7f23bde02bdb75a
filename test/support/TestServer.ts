/**
 * The real AIBase server for integration tests: the production Layers on a
 * random loopback port, with the model provider and configuration chosen by
 * the test.
 */
import { HttpServer } from "@effect/platform"
import { ConfigProvider, Effect, Layer } from "effect"
import { AppConfig } from "../../src/config/AppConfig.js"
import * as Logging from "../../src/config/Logging.js"
import { Hub } from "../../src/hub/Hub.js"
import * as OfflineModel from "../../src/openai/OfflineModel.js"
import type { OpenAi } from "../../src/openai/OpenAi.js"
import * as OpenAiSdk from "../../src/openai/OpenAiSdk.js"
import * as AiBaseServer from "../../src/server/AiBaseServer.js"
import { FakeOpenAIService } from "./FakeOpenAI.js"

export const TEST_API_KEY = "sk-test-0123456789abcdefSECRET"

export interface Options {
  readonly env?: Record<string, string>
  /** The model provider (default: the offline model). */
  readonly openai?: Layer.Layer<OpenAi, never, AppConfig>
}

/**
 * The server with the given tools layer (which may provide test services
 * too); its output includes HttpServer (for the port) and the services.
 */
export const withTools = <Tools>(tools: Layer.Layer<Tools, never, AppConfig>, options: Options = {}) => {
  const env = {
    SERVER_HOST: "127.0.0.1",
    SERVER_PORT: "0",
    OFFLINE_WORD_DELAY_MS: "0",
    LOG_LEVEL: "error",
    // Tests that look at the ledger choose their own database.
    DB_TYPE: "none",
    ...options.env
  }
  return AiBaseServer.layerServer.pipe(
    Layer.provideMerge(Layer.mergeAll(tools, options.openai ?? OfflineModel.layerFromAppConfig)),
    Layer.provideMerge(AiBaseServer.layerLedger.pipe(
      Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))
    )),
    Layer.provideMerge(Hub.layerFromAppConfig),
    Layer.provide(Logging.layer),
    Layer.provideMerge(AppConfig.layerFromEnv(env)),
    Layer.orDie
  )
}

/** The server with the built-in tools. */
export const layer = (options: Options = {}) => withTools(AiBaseServer.layerTools, options)

/** The server with the given tools against a fake OpenAI upstream (provided too, for scripting it). */
export const withToolsAndFakeUpstream = <Tools>(tools: Layer.Layer<Tools, never, AppConfig>, env: Record<string, string> = {}) =>
  Layer.unwrapEffect(Effect.map(FakeOpenAIService, (fake) =>
    withTools(tools, {
      env: {
        OPENAI_API_KEY: TEST_API_KEY,
        OPENAI_BASE_URL: fake.baseUrl,
        OPENAI_MAX_RETRIES: "0",
        ...env
      },
      openai: Layer.orDie(OpenAiSdk.layerFromAppConfig)
    }))).pipe(Layer.provideMerge(FakeOpenAIService.Default))

/** The server with the built-in tools against a fake OpenAI upstream. */
export const layerWithFakeUpstream = (env: Record<string, string> = {}) =>
  withToolsAndFakeUpstream(AiBaseServer.layerTools, env)

/** The server's base URLs. */
export const urls = Effect.map(HttpServer.HttpServer, (server) => {
  const port = server.address._tag === "TcpAddress" ? server.address.port : 0
  return { http: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/ws`, port }
})
