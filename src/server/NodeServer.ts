/**
 * The Node HTTP server AIBase listens on, as the platform's `HttpServer`.
 *
 * WebSocket upgrades to AIBase's endpoints are taken from the server's
 * `upgrade` event before the platform sees them (see `WebSocketUpgrade`);
 * every other request and upgrade goes to the platform's router as usual.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Duration, Effect, Layer } from "effect"
import * as Http from "node:http"
import type { Duplex } from "node:stream"
import { AppConfig } from "../config/AppConfig.js"

/** Takes an upgrade (and answers it) or returns false to leave it to the router. */
export type UpgradeHandler = (request: Http.IncomingMessage, socket: Duplex, head: Buffer) => boolean

/** An http.Server that offers each upgrade to a handler before its listeners. */
export class UpgradingServer extends Http.Server {
  #upgrades: UpgradeHandler | undefined = undefined

  /** Sets the handler (undefined removes it). */
  setUpgradeHandler(handler: UpgradeHandler | undefined): void {
    this.#upgrades = handler
  }

  override emit(event: string, ...args: Array<unknown>): boolean {
    if (event === "upgrade" && this.#upgrades !== undefined) {
      const [request, socket, head] = args
      if (
        request instanceof Http.IncomingMessage && isDuplex(socket) && Buffer.isBuffer(head) &&
        this.#upgrades(request, socket, head)
      ) return true
    }
    return super.emit(event, ...args)
  }
}

const isDuplex = (value: unknown): value is Duplex =>
  typeof value === "object" && value !== null && "write" in value && "on" in value

/** The running Node server, for layers that hook into it. */
export class NodeServer extends Context.Tag("aibase/NodeServer")<NodeServer, UpgradingServer>() {}

export interface Options {
  readonly host: string
  readonly port: number
  /** Node's requestTimeout and headersTimeout (SERVER_READ_TIMEOUT). */
  readonly readTimeout: Duration.Duration
}

/**
 * Node checks request timeouts only every `connectionsCheckingInterval`
 * (30 s by default); checking every second enforces SERVER_READ_TIMEOUT
 * within a second.
 */
const CHECKING_INTERVAL_MS = 1000

export const layer = (options: Options) => {
  const timeout = Duration.toMillis(options.readTimeout)
  return Layer.unwrapScoped(Effect.sync(() => {
    const server = new UpgradingServer({
      requestTimeout: timeout,
      headersTimeout: timeout,
      connectionsCheckingInterval: Math.min(CHECKING_INTERVAL_MS, timeout)
    })
    return NodeHttpServer.layer(() => server, { host: options.host, port: options.port }).pipe(
      Layer.merge(Layer.succeed(NodeServer, server))
    )
  }))
}

/** The server on SERVER_HOST:SERVER_PORT. */
export const layerConfig = Layer.unwrapEffect(Effect.map(AppConfig, (config) =>
    layer({ host: config.server.host, port: config.server.port, readTimeout: config.server.readTimeout })))
