/**
 * GET /ws: admits the client through the Hub, upgrades it and serves the
 * JSON envelope protocol on it until it goes.
 */
import { HttpLayerRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Layer } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { type ConnectionRefused, Hub } from "../hub/Hub.js"
import * as Envelope from "./Envelope.js"
import * as WsConnection from "./WsConnection.js"
import { notUpgradable, upgradeProblem, WebSocketUpgrade } from "./WebSocketUpgrade.js"

export const PATH = "/ws"

/** The answer to an upgrade the Hub refused. */
export const refused = (error: ConnectionRefused) =>
  HttpServerResponse.unsafeJson(
    { status: error.reason, error: error.reason, message: error.message },
    { status: 503, headers: { "retry-after": "1" } }
  )

export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const config = yield* AppConfig
  const hub = yield* Hub
  const upgrader = yield* WebSocketUpgrade
  const envelope = yield* Envelope.make

  yield* router.add(
    "GET",
    PATH,
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const problem = upgradeProblem(request)
      if (problem !== undefined) return notUpgradable(problem)
      const membership = yield* hub.connect("ws")
      const upgraded = yield* upgrader.upgrade(request)
      yield* Effect.logDebug("Client connected")
      yield* WsConnection.run({ upgraded, membership, envelope, hub, config })
      yield* Effect.logDebug("Client disconnected")
      return HttpServerResponse.empty()
    }).pipe(
      Effect.scoped,
      Effect.catchTag("ConnectionRefused", (error) => Effect.succeed(refused(error))),
      Effect.annotateLogs({ transport: "ws" })
    )
  )
}))
