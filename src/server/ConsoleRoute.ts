/**
 * The console: a page for people who want to look rather than read.
 *
 * - GET / is the page (src/console/index.html);
 * - GET /console/assets/<file> its script and stylesheet, and uPlot's, from a
 *   fixed list (nothing else on disk is reachable);
 * - GET /console/series the live time series (see ConsoleSeries) as JSON.
 *
 * The page and assets hold no data, so they are open; the series follow
 * AUTH_TOKENS like every other endpoint. All three sit under the `Mount`
 * (the page's URLs are relative, so it works under any prefix).
 */
import { HttpLayerRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Layer } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { AppConfig } from "../config/AppConfig.js"
import { ConsoleSeries, ConsoleSnapshot } from "../observability/ConsoleSeries.js"
import * as Auth from "./Auth.js"
import * as Mount from "./Mount.js"

export const PATH = "/"
export const ASSETS = "/console/assets/"
export const SERIES = "/console/series"

/**
 * Where the page's files are: next to this module's folder when it runs from
 * src/ (tsx), or in the package's src/ when it runs from dist/ (the build
 * does not copy them; the package ships src/).
 */
export const consoleDirectory = (): string | undefined =>
  [new URL("../console/", import.meta.url), new URL("../../src/console/", import.meta.url)]
    .map((url) => fileURLToPath(url))
    .find((directory) => existsSync(join(directory, "index.html")))

/** uPlot's dist/ folder, wherever npm put the package. */
const uplotDirectory = (): string => join(dirname(createRequire(import.meta.url).resolve("uplot/package.json")), "dist")

interface Asset {
  readonly file: string
  readonly contentType: string
}

/** Every asset the console serves, by its name under /console/assets/. */
const assets = (directory: string): Record<string, Asset> => {
  const uplot = uplotDirectory()
  return {
    "console.js": { file: join(directory, "console.js"), contentType: "text/javascript; charset=utf-8" },
    "console.css": { file: join(directory, "console.css"), contentType: "text/css; charset=utf-8" },
    "uPlot.esm.js": { file: join(uplot, "uPlot.esm.js"), contentType: "text/javascript; charset=utf-8" },
    "uPlot.min.css": { file: join(uplot, "uPlot.min.css"), contentType: "text/css; charset=utf-8" }
  }
}

/**
 * The page runs only its own files and talks only to this server; uPlot sets
 * its styles through the CSSOM, which style-src does not restrict.
 */
const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self' ws: wss:",
  "base-uri 'self'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join("; ")

/** The page is small and changes with the server: always revalidated. Assets may be cached briefly. */
const PAGE_HEADERS = {
  "cache-control": "no-cache",
  "content-security-policy": CSP,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer"
}
const ASSET_HEADERS = { "cache-control": "public, max-age=300", "x-content-type-options": "nosniff" }

const notFound = HttpServerResponse.unsafeJson(
  { error: "console_not_found", message: "The console's files are not installed (src/console is missing)" },
  { status: 404 }
)

const encodeSnapshot = HttpServerResponse.schemaJson(ConsoleSnapshot)

/**
 * Reads the page and every asset (about 170 kB) once. Synchronously, on
 * purpose: the server already listens while route layers build, and a
 * request that arrives before the router is served gets no answer at all; an
 * asynchronous read here made that window long enough to hit.
 */
const readAll = (directory: string) =>
  Effect.try(() => ({
    page: readFileSync(join(directory, "index.html"), "utf8"),
    files: Object.entries(assets(directory)).map(([name, asset]) => [name, asset, new Uint8Array(readFileSync(asset.file))] as const)
  }))

/** GET /console/series; behind AUTH_TOKENS once the auth middleware is provided to it (as `layer` does). */
export const layerSeries = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const series = yield* ConsoleSeries
  const mount = yield* Mount.Mount

  yield* router.add(
    "GET",
    Mount.path(mount, SERIES),
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const seconds = Number(new URL(request.url, "http://localhost").searchParams.get("seconds") ?? Number.NaN)
      return yield* encodeSnapshot(series.snapshot(Number.isFinite(seconds) ? seconds : undefined), {
        headers: { "cache-control": "no-store" }
      })
    }).pipe(Effect.orDie)
  )
}))

/** GET / and GET /console/assets/<file>: open, whatever AUTH_TOKENS says (they hold no data). */
export const layerPage = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const auth = Auth.makePolicy(yield* AppConfig)
  const mount = yield* Mount.Mount
  const pagePath = Mount.path(mount, PATH)

  const directory = consoleDirectory()
  const loaded = directory === undefined ? undefined : yield* Effect.either(readAll(directory))
  if (loaded === undefined || loaded._tag === "Left") {
    // The API works without the page: say so once instead of failing the server.
    yield* Effect.logWarning("The console's files were not found; GET / answers 404").pipe(
      Effect.annotateLogs({
        directory: directory ?? null,
        error: loaded === undefined ? null : String(loaded.left.error)
      })
    )
    yield* router.add("GET", pagePath, Effect.succeed(notFound))
    return
  }
  const { files, page } = loaded.right

  // The page knows before its first request whether to ask for a token (no 401 round trip),
  // and its relative URLs resolve under the mount whether it was asked for as /ai or /ai/.
  const html = page.replace(
    /<meta name="aibase-auth" content="[^"]*">/,
    `<meta name="aibase-auth" content="${auth.required ? "required" : "open"}">\n    <base href="${pagePath}">`
  )
  const pageResponse = HttpServerResponse.text(html, { contentType: "text/html; charset=utf-8", headers: PAGE_HEADERS })
  yield* router.add("GET", pagePath, Effect.succeed(pageResponse))

  for (const [name, asset, body] of files) {
    const response = HttpServerResponse.uint8Array(body, { contentType: asset.contentType, headers: ASSET_HEADERS })
    yield* router.add("GET", Mount.path(mount, `${ASSETS}${name}`), Effect.succeed(response))
  }
}))

/** The console: its page and assets (open) and its series (behind AUTH_TOKENS). Needs ConsoleSeries and AppConfig. */
export const layer = Layer.mergeAll(layerPage, layerSeries.pipe(Layer.provide(Auth.layer)))
