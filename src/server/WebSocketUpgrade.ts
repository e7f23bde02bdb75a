/**
 * Upgrades HTTP requests to WebSockets with AIBase's limits. The platform's
 * own upgrade offers no way to set ws's `maxPayload`, and that limit must hold
 * while a frame is being read (an oversized frame closes the connection with
 * 1009 before more than the limit is buffered), so the upgrade happens here,
 * on a `ws` server we configure. Both /ws and /rpc use it.
 *
 * Upgraded sockets share a heartbeat: a ping every WS_PING_INTERVAL_SECONDS,
 * and a client that missed the previous pong is dropped.
 */
import { HttpServerRequest, HttpServerResponse, Socket } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Context, Effect, Layer, type Scope } from "effect"
import { type WebSocket, WebSocketServer } from "ws"
import { AppConfig } from "../config/AppConfig.js"
import { type ConnectionRefused, Hub, type Membership, type Transport } from "../hub/Hub.js"

export interface Upgraded {
  /** The platform Socket: frames in, frames out. */
  readonly socket: Socket.Socket
  /** The underlying `ws` socket, for flow control (`bufferedAmount`). */
  readonly raw: WebSocket
}

const EMPTY_HEAD = Buffer.alloc(0)
const WEBSOCKET_KEY = /^[+/0-9A-Za-z]{22}==$/

/** Why a request cannot be upgraded, or undefined when it can. */
export const upgradeProblem = (request: HttpServerRequest.HttpServerRequest): string | undefined => {
  const headers = request.headers
  if (request.method !== "GET") return "WebSocket upgrades use GET"
  if (headers["upgrade"]?.toLowerCase() !== "websocket") return "Expected a WebSocket upgrade request"
  if (!WEBSOCKET_KEY.test(headers["sec-websocket-key"] ?? "")) return "Missing or invalid Sec-WebSocket-Key"
  if (headers["sec-websocket-version"] !== "13") return "Unsupported Sec-WebSocket-Version (expected 13)"
  return undefined
}

/** The answer to a request that cannot be upgraded. */
export const notUpgradable = (problem: string) =>
  HttpServerResponse.unsafeJson({ error: problem }, { status: 426, headers: { upgrade: "websocket" } })

/** The answer to an upgrade the Hub refused. */
export const refused = (error: ConnectionRefused) =>
  HttpServerResponse.unsafeJson(
    { status: error.reason, error: error.reason, message: error.message },
    { status: 503, headers: { "retry-after": "1" } }
  )

export class WebSocketUpgrade extends Context.Tag("aibase/WebSocketUpgrade")<WebSocketUpgrade, {
  /**
   * Upgrades a request (check `upgradeProblem` first). The socket lives as
   * long as the current scope; closing the scope closes it.
   */
  readonly upgrade: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<Upgraded, never, Scope.Scope>
  /**
   * The HTTP handler of a WebSocket endpoint: checks that the request is an
   * upgrade, admits it through the Hub (503 when refused), upgrades it and
   * runs `serve` until the connection ends.
   */
  readonly route: (
    transport: Transport,
    serve: (upgraded: Upgraded, membership: Membership) => Effect.Effect<void, never, Scope.Scope>
  ) => Effect.Effect<HttpServerResponse.HttpServerResponse, never, HttpServerRequest.HttpServerRequest>
}>() {
  static readonly make = Effect.gen(function*() {
    const config = yield* AppConfig
    const hub = yield* Hub
    const server = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new WebSocketServer({
          noServer: true,
          clientTracking: false,
          perMessageDeflate: false,
          maxPayload: config.limits.maxMessageBytes
        })
      ),
      (server) => Effect.async<void>((resume) => server.close(() => resume(Effect.void)))
    )

    // One heartbeat for all sockets: a ping every interval, and a socket that
    // did not answer the previous ping is dropped.
    const heartbeat = new Map<WebSocket, { answered: boolean }>()
    const beat = Effect.sync(() => {
      for (const [raw, state] of heartbeat) {
        if (raw.readyState !== raw.OPEN) continue
        if (!state.answered) {
          raw.terminate()
          continue
        }
        state.answered = false
        raw.ping()
      }
    })
    yield* beat.pipe(Effect.delay(config.limits.pingInterval), Effect.forever, Effect.forkScoped)

    const upgrade = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.gen(function*() {
        const incoming = NodeHttpServerRequest.toIncomingMessage(request)
        const raw = yield* Effect.acquireRelease(
          Effect.async<WebSocket>((resume) => {
            // Clients wait for the 101 before sending frames, so there is no head to pass on.
            server.handleUpgrade(incoming, incoming.socket, EMPTY_HEAD, (ws) => resume(Effect.succeed(ws)))
          }),
          (ws) =>
            Effect.sync(() => {
              if (ws.readyState === ws.OPEN) ws.close(1001, "server shutting down")
            })
        )
        // ws reports protocol errors (such as an oversized frame) as events; without
        // a listener an 'error' event would crash the process.
        raw.on("error", () => {})
        yield* Effect.acquireRelease(
          Effect.sync(() => {
            const state = { answered: true }
            raw.on("pong", () => {
              state.answered = true
            })
            heartbeat.set(raw, state)
          }),
          () => Effect.sync(() => heartbeat.delete(raw))
        )
        const socket = yield* Socket.fromWebSocket(
          // ws implements the WHATWG WebSocket interface the platform Socket expects.
          Effect.succeed(raw as unknown as globalThis.WebSocket),
          { closeCodeIsError: () => false }
        )
        return { socket, raw }
      })

    const route: WebSocketUpgrade["Type"]["route"] = (transport, serve) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const problem = upgradeProblem(request)
        if (problem !== undefined) return notUpgradable(problem)
        const membership = yield* hub.connect(transport)
        const upgraded = yield* upgrade(request)
        yield* Effect.logDebug("Client connected")
        yield* serve(upgraded, membership)
        yield* Effect.logDebug("Client disconnected")
        return HttpServerResponse.empty()
      }).pipe(
        Effect.scoped,
        Effect.catchTag("ConnectionRefused", (error) => Effect.succeed(refused(error))),
        Effect.annotateLogs({ transport })
      )

    return WebSocketUpgrade.of({ upgrade, route })
  })

  static readonly layer: Layer.Layer<WebSocketUpgrade, never, AppConfig | Hub> = Layer.scoped(
    WebSocketUpgrade,
    WebSocketUpgrade.make
  )
}
