/**
 * Bearer-token authentication. With AUTH_TOKENS (or ADMIN_TOKENS) set, every AIBase endpoint
 * except /health, the console's page and assets (and /metrics with METRICS_PUBLIC) needs `Authorization: Bearer TOKEN` or `?token=TOKEN` (browsers
 * cannot set headers on a WebSocket). Tokens are compared in constant time
 * and never logged.
 */
import { HttpLayerRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Option, Redacted } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import { AppConfig, type AppConfigShape } from "../config/AppConfig.js"
import * as Principal from "../ledger/Principal.js"

/** Paths that stay open with auth on, so that load balancers can probe them. */

const digest = (token: string): Buffer => createHash("sha256").update(token).digest()

/**
 * A checker for the configured tokens. Comparing fixed-size digests keeps the
 * time independent of where a guess differs, and every token is compared.
 */
export const makeChecker = (tokens: ReadonlyArray<Redacted.Redacted<string>>) => {
  const expected = tokens.map((token) => digest(Redacted.value(token)))
  return (presented: string | undefined): boolean => {
    if (presented === undefined || presented.length === 0) return false
    const candidate = digest(presented)
    let ok = false
    for (const token of expected) ok = timingSafeEqual(token, candidate) || ok
    return ok
  }
}

/** Who may call, who may see everyone's usage, and whom a token stands for. */
export interface Policy {
  /** Whether tokens are checked (AUTH_TOKENS or ADMIN_TOKENS set). */
  readonly required: boolean
  readonly check: (token: string | undefined) => boolean
  readonly isAdmin: (token: string | undefined) => boolean
  /** The ledger's principal for a caller's token: `anonymous` when auth is off. */
  readonly principalOf: (token: string | undefined) => string
}

export const makePolicy = (config: AppConfigShape): Policy => {
  const accepted = [...config.authTokens, ...config.adminTokens]
  const required = accepted.length > 0
  const principal = Principal.make(Option.getOrUndefined(config.principalSecret))
  return {
    required,
    check: makeChecker(accepted),
    isAdmin: makeChecker(config.adminTokens),
    principalOf: (token) => required ? principal(token) : Principal.ANONYMOUS
  }
}

/** The token presented by an Authorization header or a `token` query parameter. */
export const tokenOf = (authorization: string | undefined, url: string | undefined): string | undefined => {
  const bearer = authorization?.match(/^Bearer\s+(.+)$/i)?.[1]
  if (bearer !== undefined) return bearer.trim()
  if (url === undefined || !url.includes("token=")) return undefined
  return new URL(url, "http://localhost").searchParams.get("token") ?? undefined
}

/** The token a request presents, from its Authorization header or its `token` query parameter. */
export const presentedToken = (request: HttpServerRequest.HttpServerRequest): string | undefined =>
  tokenOf(request.headers["authorization"], request.url)

export const unauthorizedBody = {
  error: "unauthorized",
  message: "Missing or invalid token: send 'Authorization: Bearer <token>' or add '?token=<token>' to the URL"
} as const

const unauthorized = HttpServerResponse.unsafeJson(unauthorizedBody, {
  status: 401,
  headers: { "www-authenticate": "Bearer" }
})

/**
 * AUTH_TOKENS as router middleware, for the routes it is provided to (a
 * no-op when no tokens are configured). AIBase provides it to its own routes
 * except /health and the console's page; a host may provide it to its own
 * routes too: `MyRoutes.pipe(Layer.provide(Auth.middleware.layer))`.
 */
export const middleware = HttpLayerRouter.middleware(
  Effect.gen(function*() {
    const policy = makePolicy(yield* AppConfig)
    return (httpEffect) =>
      !policy.required ? httpEffect : Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
        policy.check(presentedToken(request)) ? httpEffect : Effect.succeed(unauthorized))
  })
)

/** The middleware as a Layer, to provide to route layers. */
export const layer = middleware.layer
