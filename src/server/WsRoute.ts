/**
 * GET /ws: the JSON envelope protocol, one `WsConnection` per client.
 */
import { HttpLayerRouter } from "@effect/platform"
import { Effect, Layer } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { Hub } from "../hub/Hub.js"
import * as Envelope from "./Envelope.js"
import { WebSocketUpgrade } from "./WebSocketUpgrade.js"
import * as WsConnection from "./WsConnection.js"

export const PATH = "/ws"

export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const config = yield* AppConfig
  const hub = yield* Hub
  const upgrader = yield* WebSocketUpgrade
  const envelope = yield* Envelope.make

  yield* router.add(
    "GET",
    PATH,
    upgrader.route("ws", (upgraded, membership) => WsConnection.run({ upgraded, membership, envelope, hub, config }))
  )
}))
