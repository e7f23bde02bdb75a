/**
 * Accepts WebSocket upgrades for AIBase's endpoints (/ws and /rpc) with its
 * limits: a valid handshake, auth, admission by the Hub, ws's `maxPayload`
 * (an oversized frame closes the connection with 1009 before more than the
 * limit is buffered), and a shared heartbeat.
 *
 * Upgrades are taken straight from the Node server's `upgrade` event (see
 * `NodeServer`), not through the HTTP router: a connection then costs a `ws`
 * socket and a few closures instead of the platform's per-request fibers.
 * The router routes that remain serve plain GETs (426) and apps that mount
 * AIBase's routes on a server of their own.
 *
 * A connection's Hub membership lives exactly as long as its TCP socket, so
 * a handshake that ws rejects after admission (a malformed
 * Sec-WebSocket-Protocol, say, which never reaches the upgrade callback)
 * still gives its slot back.
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Context, type Duration, Effect, Either, Layer, type Scope } from "effect"
import type { IncomingHttpHeaders, IncomingMessage } from "node:http"
import type { Duplex } from "node:stream"
import { type WebSocket, WebSocketServer } from "ws"
import { AppConfig } from "../config/AppConfig.js"
import { type ConnectionRefused, Hub, type Membership, type Transport } from "../hub/Hub.js"
import { Telemetry } from "../observability/Telemetry.js"
import * as Auth from "./Auth.js"

const EMPTY_HEAD = Buffer.alloc(0)
const WEBSOCKET_KEY = /^[+/0-9A-Za-z]{22}==$/

/** Why a request cannot be upgraded, or undefined when it can. */
export const upgradeProblem = (method: string | undefined, headers: IncomingHttpHeaders): string | undefined => {
  if (method !== "GET") return "WebSocket upgrades use GET"
  if (headers["upgrade"]?.toLowerCase() !== "websocket") return "Expected a WebSocket upgrade request"
  if (!WEBSOCKET_KEY.test(headers["sec-websocket-key"] ?? "")) return "Missing or invalid Sec-WebSocket-Key"
  if (headers["sec-websocket-version"] !== "13") return "Unsupported Sec-WebSocket-Version (expected 13)"
  return undefined
}

interface Rejection {
  /** The `reason` label of `aibase_connections_refused_total`. */
  readonly reason: string
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: object
}

const notUpgradable = (problem: string): Rejection => ({
  reason: "not_websocket",
  status: 426,
  headers: { upgrade: "websocket" },
  body: { error: problem }
})

const refused = (error: ConnectionRefused): Rejection => ({
  reason: error.reason,
  status: 503,
  headers: { "retry-after": "1" },
  body: { status: error.reason, error: error.reason, message: error.message }
})

const unauthorized: Rejection = { reason: "unauthorized", status: 401, headers: { "www-authenticate": "Bearer" }, body: Auth.unauthorizedBody }

const STATUS_TEXT: Readonly<Record<number, string>> = {
  401: "Unauthorized",
  426: "Upgrade Required",
  503: "Service Unavailable"
}

/** Answers an upgrade request on its raw socket and closes it. */
const writeRejection = (socket: Duplex, rejection: Rejection): void => {
  const body = JSON.stringify(rejection.body)
  const headers = Object.entries(rejection.headers).map(([name, value]) => `${name}: ${value}\r\n`).join("")
  socket.end(
    `HTTP/1.1 ${rejection.status} ${STATUS_TEXT[rejection.status] ?? ""}\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n` +
      headers + "\r\n" + body
  )
}

const asResponse = (rejection: Rejection) =>
  HttpServerResponse.unsafeJson(rejection.body, { status: rejection.status, headers: rejection.headers })

/**
 * Serves one upgraded connection; it owns the socket until the socket
 * closes. `principal` is whom the connection's token stands for (see Auth).
 */
export type Serve = (ws: WebSocket, membership: Membership, principal: string) => void

interface Endpoint {
  readonly transport: Transport
  readonly serve: Serve
}

export interface WebSocketUpgradeOptions {
  /** The largest frame a client may send (WS_MAX_MESSAGE_BYTES); a larger one closes the connection with 1009. */
  readonly maxMessageBytes: number
  /** The heartbeat (WS_PING_INTERVAL_SECONDS): a client that misses a pong is dropped. */
  readonly pingInterval: Duration.DurationInput
  /** Who may connect (see `Auth.makePolicy`). */
  readonly auth: Auth.Policy
}

export class WebSocketUpgrade extends Context.Tag("aibase/WebSocketUpgrade")<WebSocketUpgrade, {
  /** Serves upgrades to `path` with `serve`, for as long as the current scope lives. */
  readonly endpoint: (path: string, transport: Transport, serve: Serve) => Effect.Effect<void, never, Scope.Scope>
  /**
   * Takes an upgrade from the Node server's `upgrade` event when its path is
   * an endpoint (and answers it: 101, or 401/426/503); false otherwise.
   */
  readonly handle: (request: IncomingMessage, socket: Duplex, head: Buffer) => boolean
  /**
   * The endpoint as an HTTP route, for servers whose upgrades reach the
   * router (auth is then the router's middleware): upgrades it, and keeps
   * the request open until the connection ends.
   */
  readonly route: (path: string) => Effect.Effect<HttpServerResponse.HttpServerResponse, never, HttpServerRequest.HttpServerRequest>
}>() {
  static readonly make = (options: WebSocketUpgradeOptions) => Effect.gen(function*() {
    const hub = yield* Hub
    const telemetry = yield* Telemetry
    const auth = options.auth
    const endpoints = new Map<string, Endpoint>()
    const server = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new WebSocketServer({
          noServer: true,
          clientTracking: false,
          perMessageDeflate: false,
          maxPayload: options.maxMessageBytes
        })
      ),
      (server) => Effect.async<void>((resume) => server.close(() => resume(Effect.void)))
    )

    // One heartbeat for all sockets: a ping every interval, and a socket that
    // did not answer the previous ping is dropped.
    const heartbeat = new Map<WebSocket, { answered: boolean }>()
    const beat = Effect.sync(() => {
      for (const [ws, state] of heartbeat) {
        if (ws.readyState !== ws.OPEN) continue
        if (!state.answered) {
          ws.terminate()
          continue
        }
        state.answered = false
        ws.ping()
      }
    })
    yield* beat.pipe(Effect.delay(options.pingInterval), Effect.forever, Effect.forkScoped)

    /** Admits and upgrades; auth has been checked. Returns the rejection instead when there is one. */
    const accept = (
      endpoint: Endpoint,
      request: IncomingMessage,
      socket: Duplex,
      head: Buffer,
      principal: string
    ): Rejection | undefined => {
      const problem = upgradeProblem(request.method, request.headers)
      if (problem !== undefined) return notUpgradable(problem)
      const admitted = hub.unsafeConnect(endpoint.transport)
      if (Either.isLeft(admitted)) return refused(admitted.left)
      const membership = admitted.right
      socket.once("close", membership.release)
      server.handleUpgrade(request, socket, head, (ws) => {
        // ws reports protocol errors (an oversized frame, say) as events;
        // without a listener an 'error' event would crash the process.
        ws.on("error", () => {})
        const state = { answered: true }
        ws.on("pong", () => {
          state.answered = true
        })
        heartbeat.set(ws, state)
        ws.once("close", () => heartbeat.delete(ws))
        endpoint.serve(ws, membership, principal)
      })
      return undefined
    }

    const pathOf = (url: string | undefined): string => {
      if (url === undefined) return "/"
      const query = url.indexOf("?")
      return query === -1 ? url : url.slice(0, query)
    }

    const handle = (request: IncomingMessage, socket: Duplex, head: Buffer): boolean => {
      const endpoint = endpoints.get(pathOf(request.url))
      if (endpoint === undefined) return false
      const token = auth.required ? Auth.tokenOf(request.headers["authorization"], request.url) : undefined
      const rejection = auth.required && !auth.check(token)
        ? unauthorized
        : accept(endpoint, request, socket, head, auth.principalOf(token))
      if (rejection !== undefined) {
        telemetry.connectionRefused(rejection.reason)
        writeRejection(socket, rejection)
      }
      return true
    }

    const endpoint = (path: string, transport: Transport, serve: Serve) =>
      Effect.acquireRelease(
        Effect.sync(() => endpoints.set(path, { transport, serve })),
        () => Effect.sync(() => endpoints.delete(path))
      ).pipe(Effect.asVoid)

    const route = (path: string) =>
      Effect.gen(function*() {
        const endpoint = endpoints.get(path)
        const request = yield* HttpServerRequest.HttpServerRequest
        if (endpoint === undefined) return HttpServerResponse.empty({ status: 404 })
        const incoming = NodeHttpServerRequest.toIncomingMessage(request)
        // Clients wait for the 101 before sending frames, so there is no head to pass on.
        const rejection = accept(endpoint, incoming, incoming.socket, EMPTY_HEAD, auth.principalOf(Auth.presentedToken(request)))
        if (rejection !== undefined) {
          telemetry.connectionRefused(rejection.reason)
          return asResponse(rejection)
        }
        // The platform writes this handler's response when it returns; by then
        // the socket belongs to ws, so return only once it has closed.
        yield* Effect.async<void>((resume) => {
          if (incoming.socket.destroyed) return resume(Effect.void)
          incoming.socket.once("close", () => resume(Effect.void))
        })
        return HttpServerResponse.empty()
      })

    return WebSocketUpgrade.of({ endpoint, handle, route })
  })

  static readonly layer = (options: WebSocketUpgradeOptions): Layer.Layer<WebSocketUpgrade, never, Hub | Telemetry> =>
    Layer.scoped(WebSocketUpgrade, WebSocketUpgrade.make(options))

  /** WS_MAX_MESSAGE_BYTES, WS_PING_INTERVAL_SECONDS and the tokens, from AppConfig (the standalone server's assembly). */
  static readonly layerFromAppConfig: Layer.Layer<WebSocketUpgrade, never, AppConfig | Hub | Telemetry> = Layer
    .unwrapEffect(Effect.map(AppConfig, (config) =>
      WebSocketUpgrade.layer({
        maxMessageBytes: config.limits.maxMessageBytes,
        pingInterval: config.limits.pingInterval,
        auth: Auth.makePolicy(config)
      })))
}
