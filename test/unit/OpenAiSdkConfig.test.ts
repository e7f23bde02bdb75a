/**
 * The openai provider's configuration: a missing key is a ConfigError at
 * startup (naming OPENAI_API_KEY), never a defect; with one, the layer builds.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigError, ConfigProvider, Effect, Layer } from "effect"
import { OpenAi } from "../../src/openai/OpenAi.js"
import * as OpenAiSdk from "../../src/openai/OpenAiSdk.js"

const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

describe("OpenAiSdk.layerConfig", () => {
  it.scoped("fails with a ConfigError naming OPENAI_API_KEY when it is missing or blank", () =>
    Effect.gen(function*() {
      for (const env of [{}, { OPENAI_API_KEY: "  " }]) {
        // A failure, not a defect: Effect.flip would pass a defect on and fail the test.
        const error = yield* Effect.flip(Layer.build(OpenAiSdk.layerConfig).pipe(withEnv(env)))
        expect(ConfigError.isConfigError(error)).toBe(true)
        expect(String(error)).toContain("OPENAI_API_KEY")
      }
    }))

  it.scoped("builds the provider from a key and the other OPENAI_* variables", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(OpenAiSdk.layerConfig).pipe(
        withEnv({ OPENAI_API_KEY: "sk-test-key", OPENAI_BASE_URL: "http://127.0.0.1:9/v1/" })
      )
      const openai = yield* Effect.provide(OpenAi, context)
      expect(openai.provider).toBe("openai")
      expect(openai.baseUrl).toBe("http://127.0.0.1:9/v1")
    }))
})
