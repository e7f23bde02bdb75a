/**
 * The HTTP side and the connection limits: /health, /info, auth, frame size,
 * connection count, dead and slow clients.
 */
import { describe, expect, layer } from "@effect/vitest"
import { type Duration, Effect } from "effect"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const getJson = (url: string, headers: Record<string, string> = {}) =>
  Effect.promise(async () => {
    const response = await fetch(url, { headers })
    const text = await response.text()
    return { status: response.status, text, body: JSON.parse(text) as Record<string, unknown> }
  })

/** Polls /health until `predicate` holds (fails after `timeout`, 10 s by default, naming `what` and the last body seen). */
const awaitHealth = (
  http: string,
  what: string,
  predicate: (body: Record<string, unknown>) => boolean,
  timeout: Duration.DurationInput = Wait.DEFAULT_TIMEOUT
) => Wait.poll(getJson(`${http}/health`), (health) => predicate(health.body), { message: `/health to report ${what}`, timeout })

describe("HTTP endpoints", () => {
  layer(TestServer.layer(), { excludeTestServices: true })("open server", (it) => {
    it.scoped("/health reports ok, the number of WebSocket clients and uptime", () =>
      Effect.gen(function*() {
        const { http, ws } = yield* TestServer.urls
        const before = yield* getJson(`${http}/health`)
        expect(before.status).toBe(200)
        expect(before.body).toMatchObject({ status: "ok", clients: 0 })
        expect(typeof before.body["uptime_seconds"]).toBe("number")
        const clients = yield* Effect.all([WsClient.connect(ws), WsClient.connect(ws)])
        yield* awaitHealth(http, "2 clients", (body) => body["clients"] === 2)
        yield* Effect.forEach(clients, (client) => client.close())
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
      }))

    it.scoped("/info describes the service without secrets", () =>
      Effect.gen(function*() {
        const { http } = yield* TestServer.urls
        const info = yield* getJson(`${http}/info`)
        expect(info.status).toBe(200)
        expect(info.body).toMatchObject({
          name: "aibase",
          provider: "offline",
          offline: true,
          base_url: null,
          models: { chat: "gpt-4o-mini", embedding: "text-embedding-3-small", max_tokens: 1000, temperature: 0.7 },
          endpoints: { websocket: "/ws", health: "/health", info: "/info" },
          auth_required: false
        })
        expect(info.body["tools"]).toEqual(["calculator", "get_weather", "get_current_time"])
        expect(info.body["request_types"]).toContain("chat_completion_stream")
      }))

    it.scoped("a plain GET on /ws is told to upgrade; unknown paths are 404", () =>
      Effect.gen(function*() {
        const { http } = yield* TestServer.urls
        expect((yield* getJson(`${http}/ws`)).status).toBe(426)
        const missing = yield* Effect.promise(() => fetch(`${http}/nope`))
        expect(missing.status).toBe(404)
      }))
  })

  layer(
    TestServer.layerWithFakeUpstream(),
    { excludeTestServices: true }
  )("with an upstream", (it) => {
    it.scoped("/info names the upstream without credentials and never shows the key", () =>
      Effect.gen(function*() {
        const { http } = yield* TestServer.urls
        const info = yield* getJson(`${http}/info`)
        expect(info.body["provider"]).toBe("openai")
        expect(info.body["base_url"]).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/)
        expect(info.text).not.toContain(TestServer.TEST_API_KEY)
      }))
  })
})

describe("auth", () => {
  layer(TestServer.layer({ env: { AUTH_TOKENS: "token-one, token-two" } }), { excludeTestServices: true })(
    "AUTH_TOKENS set",
    (it) => {
      it.scoped("the upgrade needs a valid token, as a Bearer header or ?token=", () =>
        Effect.gen(function*() {
          const { ws } = yield* TestServer.urls
          const refused = yield* Effect.flip(WsClient.connect(ws))
          expect(refused.message).toContain("401")
          const wrong = yield* Effect.flip(WsClient.connect(ws, { headers: { authorization: "Bearer token-three" } }))
          expect(wrong.message).toContain("401")
          const prefix = yield* Effect.flip(WsClient.connect(`${ws}?token=token-on`))
          expect(prefix.message).toContain("401")

          const byHeader = yield* WsClient.connect(ws, { headers: { authorization: "Bearer token-two" } })
          const [pong] = yield* byHeader.request({ type: "ping", request_id: "1" })
          expect(pong?.type).toBe("pong")
          const byQuery = yield* WsClient.connect(`${ws}?token=token-one`)
          const [pong2] = yield* byQuery.request({ type: "ping", request_id: "2" })
          expect(pong2?.type).toBe("pong")
        }))

      it.scoped("/health stays open; /info needs the token and never shows it", () =>
        Effect.gen(function*() {
          const { http } = yield* TestServer.urls
          expect((yield* getJson(`${http}/health`)).status).toBe(200)
          const denied = yield* getJson(`${http}/info`)
          expect(denied.status).toBe(401)
          expect(denied.body["error"]).toBe("unauthorized")
          const allowed = yield* getJson(`${http}/info`, { authorization: "Bearer token-one" })
          expect(allowed.status).toBe(200)
          expect(allowed.body["auth_required"]).toBe(true)
          expect(allowed.text).not.toContain("token-one")
          expect(allowed.text).not.toContain("token-two")
        }))
    }
  )
})

describe("connection limits", () => {
  layer(
    TestServer.layer({
      env: { WS_MAX_MESSAGE_BYTES: "2048", MAX_CONNECTIONS: "3", WS_PING_INTERVAL_SECONDS: "0.2" }
    }),
    { excludeTestServices: true }
  )("small limits", (it) => {
    it.scoped("a frame over WS_MAX_MESSAGE_BYTES closes the connection with 1009; others are unaffected", () =>
      Effect.gen(function*() {
        const { ws } = yield* TestServer.urls
        const bystander = yield* WsClient.connect(ws)
        const client = yield* WsClient.connect(ws)
        const [pong] = yield* client.request({ type: "ping", request_id: "small" })
        expect(pong?.type).toBe("pong")
        client.send(JSON.stringify({ type: "ping", request_id: "big", payload: { pad: "x".repeat(4096) } }))
        const closed = yield* client.closed
        expect(closed.code).toBe(1009)
        const [still] = yield* bystander.request({ type: "ping", request_id: "ok" })
        expect(still?.type).toBe("pong")
      }))

    it.scoped("upgrades beyond MAX_CONNECTIONS get 503", () =>
      Effect.gen(function*() {
        const { http, ws } = yield* TestServer.urls
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
        yield* Effect.all([WsClient.connect(ws), WsClient.connect(ws), WsClient.connect(ws)])
        const refused = yield* Effect.flip(WsClient.connect(ws))
        expect(refused.message).toContain("503")
      }))

    it.scoped("a client that stops answering pings is dropped; a live one stays", () =>
      Effect.gen(function*() {
        const { http, ws } = yield* TestServer.urls
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
        const live = yield* WsClient.connect(ws)
        const dead = yield* WsClient.connect(ws, { autoPong: false })
        const closed = yield* dead.closed
        expect(closed.code).toBe(1006)
        // The live client stays connected over a few more ping intervals (0.2 s each).
        yield* Wait.expectNothingWithin("500 millis", live.closed, { message: "close of the live client" })
        const [pong] = yield* live.request({ type: "ping", request_id: "alive" })
        expect(pong?.type).toBe("pong")
        yield* awaitHealth(http, "1 client", (body) => body["clients"] === 1)
      }))
  })

  layer(
    TestServer.layer({ env: { WS_MAX_BUFFERED_BYTES: "65536", SERVER_WRITE_TIMEOUT: "1", WS_MAX_MESSAGE_BYTES: "1048576" } }),
    { excludeTestServices: true }
  )("slow clients", (it) => {
    it.scoped("a client that stops reading is dropped after SERVER_WRITE_TIMEOUT instead of buffering", () =>
      Effect.gen(function*() {
        const { http, ws } = yield* TestServer.urls
        const client = yield* WsClient.connect(ws)
        const tcp = (client.raw as unknown as { _socket: import("node:net").Socket })._socket
        tcp.pause()
        // Each answer is ~8 MB of JSON (sparse vectors): far more than the socket buffers hold.
        const input = Array.from({ length: 1000 }, (_, i) => `text ${i}`)
        for (let i = 0; i < 4; i++) {
          client.send({ type: "embedding", request_id: `big-${i}`, payload: { input, dimensions: 4096 } })
        }
        // Encoding these answers keeps the in-process server busy for many seconds (20 s on a
        // loaded machine before /health answered at all), hence the longer deadline.
        yield* awaitHealth(http, "the stalled client dropped (0 clients)", (body) => body["clients"] === 0, "25 seconds")
        tcp.resume()
        const closed = yield* client.closed
        expect(closed.code).toBe(1006)
      }))
  })
})
