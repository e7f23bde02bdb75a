/**
 * AIBase's configuration, read once at startup through Effect Config from the
 * environment (see `DotEnv` for the `.env` fallback). Every value is validated
 * by a Schema; an invalid value fails startup with a message naming it.
 */
import { Config, ConfigError, ConfigProvider, Context, Duration, Either, Layer, LogLevel, Option, Redacted, Schema } from "effect"

import { describeParseError } from "../protocol/Validation.js"

const Port = Schema.NumberFromString.pipe(Schema.int(), Schema.between(0, 65535))
const PositiveInt = Schema.NumberFromString.pipe(Schema.int(), Schema.positive())
const NonNegativeInt = Schema.NumberFromString.pipe(Schema.int(), Schema.nonNegative())
const Seconds = Schema.NumberFromString.pipe(Schema.positive())

/** Like `Schema.Config`, with a one-line message instead of a parse tree. */
const schemaConfig = <A, I extends string>(name: string, schema: Schema.Schema<A, I>): Config.Config<A> => {
  const decode = Schema.decodeUnknownEither(schema)
  return Config.string(name).pipe(Config.mapOrFail((raw) =>
    decode(raw).pipe(Either.mapLeft((error) => ConfigError.InvalidData([], describeParseError(error))))
  ))
}

const withDefault = <A, I extends string>(name: string, schema: Schema.Schema<A, I>, fallback: A) =>
  schemaConfig(name, schema).pipe(Config.withDefault(fallback))

const seconds = (name: string, fallback: number) =>
  withDefault(name, Seconds, fallback).pipe(Config.map(Duration.seconds))

/** The chat defaults (OPENAI_MODEL, OPENAI_TEMPERATURE, OPENAI_MAX_TOKENS), for `Chat.layerConfig`. */
export const chatDefaults = Config.all({
  model: Config.string("OPENAI_MODEL").pipe(Config.withDefault("gpt-4o-mini")),
  maxTokens: withDefault("OPENAI_MAX_TOKENS", PositiveInt, 1000),
  temperature: withDefault("OPENAI_TEMPERATURE", Schema.NumberFromString.pipe(Schema.between(0, 2)), 0.7)
})

/**
 * How to reach the model provider: OPENAI_API_KEY (none when unset or
 * blank), OPENAI_BASE_URL, OPENAI_TIMEOUT_SECONDS, OPENAI_MAX_RETRIES, for
 * `OpenAiSdk.layerConfig`.
 */
export const openaiConnection = Config.all({
  apiKey: Config.option(Config.redacted("OPENAI_API_KEY")).pipe(
    Config.map(Option.filter((key) => Redacted.value(key).trim().length > 0))
  ),
  baseUrl: Config.url("OPENAI_BASE_URL").pipe(
    Config.withDefault(new URL("https://api.openai.com/v1")),
    Config.map((url) => url.href.replace(/\/+$/, ""))
  ),
  timeout: seconds("OPENAI_TIMEOUT_SECONDS", 60),
  maxRetries: withDefault("OPENAI_MAX_RETRIES", NonNegativeInt.pipe(Schema.lessThanOrEqualTo(10)), 2)
})

export type ProviderChoice = "auto" | "openai" | "offline"
export type Provider = "openai" | "offline"
export type LogFormat = "pretty" | "json"

const logLevels = {
  all: LogLevel.All,
  trace: LogLevel.Trace,
  debug: LogLevel.Debug,
  info: LogLevel.Info,
  warning: LogLevel.Warning,
  error: LogLevel.Error,
  fatal: LogLevel.Fatal,
  none: LogLevel.None
} as const
const LogLevelName = Schema.Literal("all", "trace", "debug", "info", "warning", "error", "fatal", "none")

/** Splits a comma-separated list, dropping blanks. */
const commaList = (value: string): ReadonlyArray<string> =>
  value.split(",").map((s) => s.trim()).filter((s) => s.length > 0)

const config = Config.all({
  server: Config.all({
    host: Config.string("SERVER_HOST").pipe(Config.withDefault("0.0.0.0")),
    port: withDefault("SERVER_PORT", Port, 8080),
    readTimeout: seconds("SERVER_READ_TIMEOUT", 30),
    writeTimeout: seconds("SERVER_WRITE_TIMEOUT", 30),
    shutdownGrace: seconds("SHUTDOWN_GRACE_SECONDS", 10)
  }),
  openai: Config.all({
    chatDefaults,
    openaiConnection,
    embeddingModel: Config.string("OPENAI_EMBEDDING_MODEL").pipe(Config.withDefault("text-embedding-3-small"))
  }).pipe(Config.map(({ chatDefaults, openaiConnection, ...rest }) => ({ ...chatDefaults, ...openaiConnection, ...rest }))),
  providerChoice: withDefault("LLM_PROVIDER", Schema.Literal("auto", "openai", "offline"), "auto"),
  offline: Config.all({
    embeddingDimensions: withDefault("OFFLINE_EMBEDDING_DIMENSIONS", PositiveInt.pipe(Schema.lessThanOrEqualTo(4096)), 256),
    wordDelay: withDefault("OFFLINE_WORD_DELAY_MS", NonNegativeInt, 15).pipe(Config.map(Duration.millis))
  }),
  authTokens: Config.redacted("AUTH_TOKENS").pipe(
    Config.withDefault(Redacted.make("")),
    Config.map((tokens) => commaList(Redacted.value(tokens)).map(Redacted.make))
  ),
  /** Tokens that also see every principal's usage; they are accepted wherever AUTH_TOKENS are. */
  adminTokens: Config.redacted("ADMIN_TOKENS").pipe(
    Config.withDefault(Redacted.make("")),
    Config.map((tokens) => commaList(Redacted.value(tokens)).map(Redacted.make))
  ),
  /** /metrics answers without a token even when AUTH_TOKENS are set (for a scraper inside the network). */
  metricsPublic: Config.boolean("METRICS_PUBLIC").pipe(Config.withDefault(false)),
  /** The key of the principal ids in the ledger (see ledger/Principal). */
  principalSecret: Config.option(Config.redacted("PRINCIPAL_SECRET")).pipe(
    Config.map(Option.filter((secret) => Redacted.value(secret).length > 0))
  ),
  limits: Config.all({
    maxMessageBytes: withDefault("WS_MAX_MESSAGE_BYTES", PositiveInt, 1024 * 1024),
    maxInFlight: withDefault("WS_MAX_IN_FLIGHT", PositiveInt, 32),
    maxConnections: withDefault("MAX_CONNECTIONS", PositiveInt, 10_000),
    pingInterval: seconds("WS_PING_INTERVAL_SECONDS", 30),
    maxBufferedBytes: withDefault("WS_MAX_BUFFERED_BYTES", PositiveInt, 4 * 1024 * 1024),
    maxConcurrentStreams: withDefault("MAX_CONCURRENT_STREAMS", PositiveInt, 1000),
    maxEventLoopDelay: withDefault("MAX_EVENT_LOOP_DELAY_MS", PositiveInt, 1000).pipe(Config.map(Duration.millis))
  }),
  toolTimeout: seconds("TOOL_TIMEOUT_SECONDS", 10),
  log: Config.all({
    level: withDefault("LOG_LEVEL", LogLevelName, "info").pipe(Config.map((name) => logLevels[name])),
    format: withDefault("LOG_FORMAT", Schema.Literal("pretty", "json"), "pretty")
  }),
}).pipe(
  Config.mapOrFail(({ providerChoice, ...rest }) =>
    resolveProvider(providerChoice, Option.isSome(rest.openai.apiKey)).pipe(
      Either.map((provider) => ({ ...rest, provider }))
    )
  )
)

const resolveProvider = (choice: ProviderChoice, hasKey: boolean): Either.Either<Provider, ConfigError.ConfigError> => {
  if (choice === "openai" && !hasKey) {
    return Either.left(
      ConfigError.InvalidData(["LLM_PROVIDER"], "LLM_PROVIDER=openai needs OPENAI_API_KEY to be set")
    )
  }
  return Either.right(choice === "auto" ? (hasKey ? "openai" : "offline") : choice)
}

export interface AppConfigShape extends Config.Config.Success<typeof config> {}

export class AppConfig extends Context.Tag("aibase/AppConfig")<AppConfig, AppConfigShape>() {
  /** The Config description, for apps that read it under their own provider. */
  static readonly config: Config.Config<AppConfigShape> = config

  /** Reads the configuration from the current ConfigProvider. */
  static readonly layer: Layer.Layer<AppConfig, ConfigError.ConfigError> = Layer.effect(AppConfig, config)

  /**
   * Reads the variables under a prefix, so that they cannot collide with the
   * host's own: `layerPrefixed("AIBASE")` reads AIBASE_SERVER_PORT,
   * AIBASE_AUTH_TOKENS... from the current ConfigProvider.
   */
  static readonly layerPrefixed = (prefix: string): Layer.Layer<AppConfig, ConfigError.ConfigError> =>
    Layer.effect(AppConfig, Config.nested(config, prefix))

  /**
   * A configuration read from the given variables only (for tests and
   * embedding apps). Each call builds a layer of its own: sharing
   * `AppConfig.layer` would let a MemoMap hand one call's configuration to
   * another.
   */
  static readonly layerFromEnv = (env: Record<string, string>): Layer.Layer<AppConfig, ConfigError.ConfigError> =>
    Layer.effect(AppConfig, config).pipe(
      Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))
    )
}
