/**
 * Picks the model provider from LLM_PROVIDER: the openai SDK when a key is
 * configured (or LLM_PROVIDER=openai), the built-in offline model otherwise.
 */
import { type ConfigError, Effect, Layer } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import * as OfflineModel from "./OfflineModel.js"
import type { OpenAi } from "./OpenAi.js"
import * as OpenAiSdk from "./OpenAiSdk.js"

export const layer: Layer.Layer<OpenAi, ConfigError.ConfigError, AppConfig> = Layer.unwrapEffect(
  Effect.map(AppConfig, (config) => config.provider === "openai" ? OpenAiSdk.layerFromAppConfig : OfflineModel.layerFromAppConfig)
)
