/**
 * GET /metrics: Prometheus' scrape of every metric (see observability/).
 * Behind AUTH_TOKENS like the other endpoints unless METRICS_PUBLIC=true
 * (see `AiBaseServer.routes`).
 */
import { HttpLayerRouter, HttpServerResponse } from "@effect/platform"
import { Effect, Layer } from "effect"
import { Hub } from "../hub/Hub.js"
import * as Metrics from "../observability/Metrics.js"
import { CONTENT_TYPE, Prometheus } from "../observability/Prometheus.js"
import * as Mount from "./Mount.js"

export const PATH = "/metrics" as const

export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const prometheus = yield* Prometheus
  const hub = yield* Hub
  const labels = new Metrics.Labelled()
  // The Hub counts connections already: the gauge is read from it at each scrape.
  const sampleConnections = Effect.sync(() => {
    for (const [transport, count] of Object.entries(hub.unsafeStats().clientsByTransport)) {
      Metrics.connections.unsafeUpdate(count, labels.get(transport, () => [["transport", transport]]))
    }
  })
  yield* router.add(
    "GET",
    Mount.path(yield* Mount.Mount, PATH),
    Effect.zipRight(sampleConnections, prometheus.scrape).pipe(
      Effect.map((text) => HttpServerResponse.text(text, { contentType: CONTENT_TYPE }))
    )
  )
}))
