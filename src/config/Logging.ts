/**
 * The logger from LOG_LEVEL and LOG_FORMAT (pretty for people, json for
 * log collectors).
 */
import { Effect, Layer, Logger } from "effect"
import { AppConfig } from "./AppConfig.js"

export const layer: Layer.Layer<never, never, AppConfig> = Layer.unwrapEffect(
  Effect.map(AppConfig, ({ log }) =>
    Layer.merge(
      Logger.minimumLogLevel(log.level),
      log.format === "json" ? Logger.json : Logger.pretty
    ))
)
