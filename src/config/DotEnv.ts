/**
 * Configuration sources: environment variables first, then a `.env` file in
 * the working directory (a missing file is fine), then each setting's default.
 */
import { PlatformConfigProvider } from "@effect/platform"
import { NodeFileSystem } from "@effect/platform-node"
import { Layer } from "effect"

export const layer = (path = ".env"): Layer.Layer<never> =>
  PlatformConfigProvider.layerDotEnvAdd(path).pipe(Layer.provide(NodeFileSystem.layer))
