/**
 * Configuration: defaults, validation with messages naming the variable,
 * provider choice, the .env fallback, and secrets kept redacted.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Context, Duration, Effect, Layer, LogLevel, Option, Redacted } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { AppConfig } from "../../src/config/AppConfig.js"
import * as DotEnv from "../../src/config/DotEnv.js"

const load = (env: Record<string, string>) => AppConfig.pipe(Effect.provide(AppConfig.layerFromEnv(env)))
const failure = (env: Record<string, string>) => Effect.map(Effect.flip(load(env)), String)

describe("AppConfig", () => {
  it.effect("has the documented defaults", () =>
    Effect.gen(function*() {
      const config = yield* load({})
      expect(config.server).toMatchObject({ host: "0.0.0.0", port: 8080 })
      expect(Duration.toSeconds(config.server.readTimeout)).toBe(30)
      expect(Duration.toSeconds(config.server.writeTimeout)).toBe(30)
      expect(Duration.toSeconds(config.server.shutdownGrace)).toBe(10)
      // The default upstream, checked part by part (no test ever connects to it).
      expect(new URL(config.openai.baseUrl)).toMatchObject({ protocol: "https:", hostname: "api.openai.com", pathname: "/v1" })
      expect(config.openai).toMatchObject({
        model: "gpt-4o-mini",
        embeddingModel: "text-embedding-3-small",
        maxTokens: 1000,
        temperature: 0.7,
        maxRetries: 2
      })
      expect(Duration.toSeconds(config.openai.timeout)).toBe(60)
      expect(config.provider).toBe("offline")
      expect(config.authTokens).toEqual([])
      expect(config.limits).toMatchObject({ maxMessageBytes: 1048576, maxInFlight: 32, maxConnections: 10000 })
      expect(Duration.toSeconds(config.toolTimeout)).toBe(10)
      expect(config.log).toEqual({ level: LogLevel.Info, format: "pretty" })
    }))

  it.effect("LLM_PROVIDER=auto picks openai when a key is set, offline otherwise", () =>
    Effect.gen(function*() {
      expect((yield* load({ OPENAI_API_KEY: "sk-x" })).provider).toBe("openai")
      expect((yield* load({ OPENAI_API_KEY: "   " })).provider).toBe("offline")
      expect((yield* load({ OPENAI_API_KEY: "sk-x", LLM_PROVIDER: "offline" })).provider).toBe("offline")
    }))

  it.effect("invalid values fail with a message naming the variable", () =>
    Effect.gen(function*() {
      expect(yield* failure({ SERVER_PORT: "abc" })).toContain("SERVER_PORT")
      expect(yield* failure({ SERVER_PORT: "70000" })).toContain("SERVER_PORT")
      expect(yield* failure({ OPENAI_TEMPERATURE: "9" })).toMatch(/OPENAI_TEMPERATURE.*between 0 and 2/)
      expect(yield* failure({ LLM_PROVIDER: "openai" })).toContain("LLM_PROVIDER=openai needs OPENAI_API_KEY")
      expect(yield* failure({ LLM_PROVIDER: "claude" })).toContain("LLM_PROVIDER")
      expect(yield* failure({ OPENAI_BASE_URL: "not a url" })).toContain("OPENAI_BASE_URL")
      expect(yield* failure({ WS_MAX_IN_FLIGHT: "0" })).toContain("WS_MAX_IN_FLIGHT")
      expect(yield* failure({ LOG_LEVEL: "loud" })).toContain("LOG_LEVEL")
      expect(yield* failure({ LOG_FORMAT: "xml" })).toContain("LOG_FORMAT")
    }))

  it.effect("secrets stay redacted", () =>
    Effect.gen(function*() {
      const config = yield* load({ OPENAI_API_KEY: "sk-very-secret", AUTH_TOKENS: "tok-a, tok-b,", DB_PASSWORD: "pw" })
      const printed = JSON.stringify(config) + String(config.authTokens) + String(Option.getOrThrow(config.openai.apiKey))
      expect(printed).not.toContain("sk-very-secret")
      expect(printed).not.toContain("tok-a")
      expect(printed).not.toContain("pw\"")
      expect(config.authTokens.map(Redacted.value)).toEqual(["tok-a", "tok-b"])
    }))

  it.effect("environment variables win over .env, which wins over defaults", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "aibase-dotenv-"))
      const file = join(dir, ".env")
      writeFileSync(file, "SERVER_PORT=8790\nOPENAI_MODEL=from-dotenv\nOPENAI_API_KEY=sk-from-dotenv\n")
      const config = yield* AppConfig.pipe(
        Effect.provide(AppConfig.layer.pipe(
          Layer.provide(DotEnv.layer(file)),
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["SERVER_PORT", "9999"]]))))
        ))
      )
      expect(config.server.port).toBe(9999)
      expect(config.openai.model).toBe("from-dotenv")
      expect(config.provider).toBe("openai")
      const missing = yield* AppConfig.pipe(Effect.provide(AppConfig.layer.pipe(Layer.provide(DotEnv.layer(join(dir, "nope.env"))))))
      expect(missing.server.port).toBeGreaterThan(0)
    }))
})

describe("AppConfig.layerPrefixed", () => {
  it.effect("reads the variables under the prefix only", () =>
    Effect.gen(function*() {
      const config = yield* AppConfig.pipe(
        Effect.provide(AppConfig.layerPrefixed("AIBASE")),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([
          ["AIBASE_SERVER_PORT", "9123"],
          ["AIBASE_OPENAI_MODEL", "host-model"],
          // The host's own variable of the same name is not AIBase's.
          ["SERVER_PORT", "80"]
          // As the environment provider joins names.
        ]), { pathDelim: "_" }))
      )
      expect(config.server.port).toBe(9123)
      expect(config.openai.model).toBe("host-model")
    }))
})

describe("AppConfig.layerFromEnv", () => {
  // Test layers share one MemoMap per file: two configurations built in it must stay two.
  it.effect("each call is its own configuration, also when built in one MemoMap", () =>
    Effect.gen(function*() {
      const memoMap = yield* Layer.makeMemoMap
      const scope = yield* Effect.scope
      const read = (env: Record<string, string>) =>
        Effect.map(Layer.buildWithMemoMap(AppConfig.layerFromEnv(env), memoMap, scope), (context) =>
          Context.get(context, AppConfig).server.port)
      expect(yield* read({ SERVER_PORT: "1234" })).toBe(1234)
      expect(yield* read({ SERVER_PORT: "0" })).toBe(0)
    }).pipe(Effect.scoped))
})
