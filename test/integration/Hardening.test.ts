/**
 * Hostile and careless clients against a real server (issue 11): deeply
 * nested frames, malformed upgrades, pipelining and non-reading clients,
 * admission control under too many model calls, slow HTTP request heads and
 * auth on the upgrade path. Where the process itself matters (does it stay
 * up, what does it log, does it exit on SIGTERM) the server runs as a child
 * process (`npm start`'s command); elsewhere in this process.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Context, Duration, Effect, Layer } from "effect"
import { randomBytes } from "node:crypto"
import { connect as connectTcp, type Socket } from "node:net"
import type { ServerFrame } from "aibase/protocol"
import * as Auth from "../../src/server/Auth.js"
import { Behaviour, FakeOpenAIService, textChunks } from "../support/FakeOpenAI.js"
import * as ServerProcess from "../support/ServerProcess.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

// ---------------------------------------------------------------------------
// Helpers

type ErrorFrame = Extract<ServerFrame, { readonly type: "error" }>

const isError = (frame: ServerFrame): frame is ErrorFrame => frame.type === "error"

/** The server as a child process, for the layer's lifetime (killed at the end if still running). */
class Child extends Context.Tag("test/Hardening/Child")<Child, ServerProcess.ServerProcess>() {}

const childLayer = (env: Record<string, string>) =>
  Layer.scoped(
    Child,
    Effect.acquireRelease(
      Effect.promise(() => ServerProcess.start({ env: { LLM_PROVIDER: "offline", LOG_FORMAT: "json", ...env }, timeoutMs: 60_000 })),
      (server) => Effect.promise(() => ServerProcess.stop(server, "SIGKILL"))
    )
  )

/** Starting a child under a loaded machine can take many seconds. */
const CHILD_STARTUP = Duration.seconds(90)

const childUrls = (server: ServerProcess.ServerProcess) => ({
  http: `http://127.0.0.1:${server.port}`,
  ws: `ws://127.0.0.1:${server.port}/ws`,
  port: server.port
})

const getHealth = (http: string) =>
  Effect.tryPromise(async () => {
    const response = await fetch(`${http}/health`)
    return { status: response.status, body: (await response.json()) as Record<string, unknown> }
  })

/** Polls /health until `predicate` holds for its body (fails after `timeout` naming the last body seen). */
const awaitHealth = (
  http: string,
  what: string,
  predicate: (body: Record<string, unknown>) => boolean,
  timeout: Duration.DurationInput = Wait.DEFAULT_TIMEOUT
) =>
  Wait.poll(getHealth(http), (health) => health.status === 200 && predicate(health.body), {
    message: `/health to report ${what}`,
    timeout
  })

interface RawResponse {
  /** 0 when the server closed the connection without answering. */
  readonly status: number
  /** Lower-cased names. */
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
  /** From the first byte written to the connection's close. */
  readonly elapsedMs: number
}

const parseResponse = (raw: string, elapsedMs: number): RawResponse => {
  const end = raw.indexOf("\r\n\r\n")
  const head = end === -1 ? raw : raw.slice(0, end)
  const [statusLine = "", ...lines] = head.split("\r\n")
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(":")
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1] ?? 0)
  return { status, headers, body: end === -1 ? "" : raw.slice(end + 4), elapsedMs }
}

/**
 * Writes `request` on a fresh TCP connection and reads until the server
 * closes it. `trickle` writes the request in pieces, one every `every`, and
 * keeps going (never finishing) until the server answers or closes.
 */
const rawExchange = (
  port: number,
  request: string | { readonly trickle: ReadonlyArray<string>; readonly every: Duration.DurationInput },
  options: { readonly message: string; readonly timeout?: Duration.DurationInput }
) =>
  Wait.awaitEvent(
    Effect.async<RawResponse>((resume) => {
      const chunks: Array<Buffer> = []
      let started = 0
      let timer: NodeJS.Timeout | undefined
      const socket: Socket = connectTcp(port, "127.0.0.1", () => {
        started = Date.now()
        if (typeof request === "string") return void socket.write(request)
        let next = 0
        const write = () => {
          const piece = request.trickle[next++ % request.trickle.length]
          if (!socket.destroyed && piece !== undefined) socket.write(piece)
        }
        write()
        timer = setInterval(write, Duration.toMillis(request.every))
      })
      socket.on("data", (chunk) => chunks.push(chunk))
      // A reset after the answer is fine: what arrived is the answer.
      socket.on("error", () => {})
      socket.on("close", () => {
        clearInterval(timer)
        resume(Effect.succeed(parseResponse(Buffer.concat(chunks).toString("utf8"), Date.now() - started)))
      })
      return Effect.sync(() => {
        clearInterval(timer)
        socket.destroy()
      })
    }),
    options
  )

/** An upgrade request with a valid key and version, plus `extraHeaders`. */
const upgradeRequest = (port: number, path: string, extraHeaders: ReadonlyArray<string> = []) =>
  [
    `GET ${path} HTTP/1.1`,
    `Host: 127.0.0.1:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`,
    "Sec-WebSocket-Version: 13",
    ...extraHeaders,
    "",
    ""
  ].join("\r\n")

const pingRoundTrip = (client: WsClient.WsClient, requestId: string) =>
  Effect.gen(function*() {
    const frames = yield* client.request({ type: "ping", request_id: requestId })
    expect(frames.map((frame) => frame.type)).toEqual(["pong"])
  })

/** Lines of the child's JSON log whose message is `message`. */
const logLines = (output: string, message: string): Array<Record<string, unknown>> =>
  output.split("\n").flatMap((line) => {
    if (!line.includes(message)) return []
    try {
      const parsed: unknown = JSON.parse(line)
      return typeof parsed === "object" && parsed !== null && (parsed as Record<string, unknown>)["message"] === message
        ? [parsed as Record<string, unknown>]
        : []
    } catch {
      return []
    }
  })

const DROPPED = "Dropping a client that is not reading its responses"

// ---------------------------------------------------------------------------
// Deeply nested frames

const arrays = (depth: number, inner = "1") => "[".repeat(depth) + inner + "]".repeat(depth)
const objects = (depth: number, inner = "1") => "{\"a\":".repeat(depth) + inner + "}".repeat(depth)

interface DeepCase {
  readonly name: string
  readonly frame: (deep: string) => string
  /** The request id the error frame names (null when the frame has no usable one). */
  readonly requestId: string | null
}

const user = "{\"role\":\"user\",\"content\":\"hi\"}"

const deepCases: ReadonlyArray<DeepCase> = [
  { name: "the whole frame", frame: (deep) => deep, requestId: null },
  {
    name: "payload.messages[0].content (chat_completion)",
    frame: (deep) => `{"type":"chat_completion","request_id":"content","payload":{"messages":[{"role":"user","content":${deep}}]}}`,
    requestId: "content"
  },
  {
    name: "payload.messages[0].content (chat_completion_stream)",
    frame: (deep) =>
      `{"type":"chat_completion_stream","request_id":"stream-content","payload":{"messages":[{"role":"user","content":${deep}}]}}`,
    requestId: "stream-content"
  },
  { name: "request_id", frame: (deep) => `{"type":"ping","request_id":${deep}}`, requestId: null },
  { name: "type", frame: (deep) => `{"type":${deep},"request_id":"type"}`, requestId: "type" },
  {
    name: "an embedding's input",
    frame: (deep) => `{"type":"embedding","request_id":"input","payload":{"input":${deep}}}`,
    requestId: "input"
  },
  { name: "a cancel's payload", frame: (deep) => `{"type":"cancel","request_id":"cancel","payload":${deep}}`, requestId: "cancel" },
  {
    name: "a cancel's payload.request_id",
    frame: (deep) => `{"type":"cancel","request_id":"cancel-id","payload":{"request_id":${deep}}}`,
    requestId: "cancel-id"
  },
  {
    name: "a tool's parameters in a chat_completion's tools",
    frame: (deep) =>
      `{"type":"chat_completion","request_id":"tools","payload":{"messages":[${user}],` +
      `"tools":[{"type":"function","function":{"name":"deep","parameters":{"type":"object","properties":{"x":${deep}}}}}]}}`,
    requestId: "tools"
  },
  {
    name: "a response_format's json_schema",
    frame: (deep) =>
      `{"type":"chat_completion","request_id":"format","payload":{"messages":[${user}],` +
      `"response_format":{"type":"json_schema","json_schema":{"name":"deep","schema":${deep}}}}}`,
    requestId: "format"
  },
  {
    name: "an unknown payload field (ignored fields are still bounded)",
    frame: (deep) => `{"type":"ping","request_id":"unknown-field","payload":{"extra":${deep}}}`,
    requestId: "unknown-field"
  }
]

/** Just over the bound, the depth that crashed the process, and far deeper (still under 1 MiB). */
const depths = [100, 3000, 100_000] as const

// ---------------------------------------------------------------------------

describe("hardening", () => {
  // One child with the default limits: it must stay up through every deep frame and pipelined pings.
  layer(childLayer({}), { excludeTestServices: true, timeout: CHILD_STARTUP })("child process, default limits", (it) => {
    it.scoped("deeply nested frames each get one validation error; the connection and the process stay up", () =>
      Effect.gen(function*() {
        const child = yield* Child
        const { http, ws } = childUrls(child)
        const client = yield* WsClient.connect(ws)
        let round = 0
        for (const depth of depths) {
          for (const nest of [arrays, objects]) {
            for (const testCase of deepCases) {
              const label = `${testCase.name}, ${nest === arrays ? "arrays" : "objects"} ${depth} deep`
              const from = client.frames.length
              const pingId = `after-${round++}`
              client.send(testCase.frame(nest(depth)))
              client.send({ type: "ping", request_id: pingId })
              const frames = yield* client.waitForFrames(
                (all) => all.slice(from).some((frame) => frame.type === "pong" && frame.request_id === pingId),
                { message: `the pong after ${label}` }
              )
              const answers = frames.slice(from).filter((frame) => frame.request_id !== pingId)
              expect(answers, label).toHaveLength(1)
              const [answer] = answers
              if (answer === undefined || !isError(answer)) return expect.fail(`${label}: expected an error frame, got ${JSON.stringify(answer)}`)
              expect(answer.request_id, label).toBe(testCase.requestId)
              expect(answer.data.category, label).toBe("validation")
              expect(["too_deep", "invalid_payload"], label).toContain(answer.data.code)
              expect(answer.data.retryable, label).toBe(false)
              // The message describes the problem; it does not echo the value.
              expect(answer.error.length, label).toBeLessThan(1000)
            }
          }
        }
        // Nothing else arrives late for any of those frames (a request that slipped through would answer now).
        const total = client.frames.length
        yield* Wait.expectNothingWithin("300 millis", () => client.frames.length > total, { message: "late frames" })
        yield* pingRoundTrip(client, "still-open")
        expect(child.child.exitCode).toBeNull()
        const health = yield* getHealth(http)
        expect(health.status).toBe(200)
        const output = child.output()
        expect(output).not.toContain("RangeError")
        expect(output).not.toContain("Maximum call stack")
        expect(output).not.toContain("Request failed unexpectedly")
        // A new client is served as usual.
        const fresh = yield* WsClient.connect(ws)
        yield* pingRoundTrip(fresh, "fresh")
      }), { timeout: 60_000 })

    it.scoped("a deep tool_execute arguments string gets a tool error result, not a crash", () =>
      Effect.gen(function*() {
        const child = yield* Child
        const client = yield* WsClient.connect(childUrls(child).ws)
        for (const depth of depths) {
          const requestId = `deep-args-${depth}`
          const frames = yield* client.request({
            type: "tool_execute",
            request_id: requestId,
            payload: {
              tool_call: { id: "call-1", type: "function", function: { name: "calculator", arguments: `{"expression":${arrays(depth)}}` } }
            }
          })
          expect(frames).toHaveLength(1)
          const [frame] = frames
          if (frame?.type === "tool_execute_response") expect(frame.data.is_error).toBe(true)
          else if (frame !== undefined && isError(frame)) expect(frame.data.category).toBe("validation")
          else expect.fail(`expected a tool error result or a validation error, got ${JSON.stringify(frame)}`)
        }
        yield* pingRoundTrip(client, "still-open")
        expect(child.child.exitCode).toBeNull()
        expect(child.output()).not.toContain("RangeError")
      }))

    it.scoped("a client that reads but sends 2,000 pings back to back gets 2,000 pongs and stays connected, unlogged", () =>
      Effect.gen(function*() {
        const child = yield* Child
        const { ws } = childUrls(child)
        const droppedBefore = logLines(child.output(), DROPPED).length
        const client = yield* WsClient.connect(ws)
        const count = 2000
        for (let i = 0; i < count; i++) client.send({ type: "ping", request_id: `p${i}` })
        const frames = yield* client.waitForFrames(
          (all) => all.length >= count || all.some((frame) => frame.type !== "pong") || client.raw.readyState !== client.raw.OPEN,
          { message: `${count} pongs (or a close)`, timeout: "30 seconds" }
        )
        expect(client.raw.readyState, "the connection state (1: open)").toBe(client.raw.OPEN)
        expect(frames.filter((frame) => frame.type !== "pong")).toEqual([])
        expect(frames).toHaveLength(count)
        expect(new Set(frames.map((frame) => frame.request_id)).size).toBe(count)
        expect(frames.every((frame, i) => frame.request_id === `p${i}`)).toBe(true)
        yield* Wait.expectNothingWithin("300 millis", client.closed, { message: "close of the pipelining client" })
        yield* pingRoundTrip(client, "after-pipelining")
        expect(logLines(child.output(), DROPPED).length).toBe(droppedBefore)
      }), { timeout: 60_000 })
  })

  // A client that does not read, with a small send buffer and a one-second write timeout.
  layer(
    childLayer({ WS_MAX_BUFFERED_BYTES: "65536", SERVER_WRITE_TIMEOUT: "1", OFFLINE_EMBEDDING_DIMENSIONS: "4096" }),
    { excludeTestServices: true, timeout: CHILD_STARTUP }
  )("child process, WS_MAX_BUFFERED_BYTES=65536 and SERVER_WRITE_TIMEOUT=1", (it) => {
    it.scoped("a client that stops reading is terminated and logged exactly once; other clients are unaffected", () =>
      Effect.gen(function*() {
        const child = yield* Child
        const { http, ws } = childUrls(child)
        const droppedBefore = logLines(child.output(), DROPPED).length
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
        const bystander = yield* WsClient.connect(ws)
        const client = yield* WsClient.connect(ws)
        const tcp: unknown = Reflect.get(client.raw, "_socket")
        if (!(tcp instanceof Object) || !("pause" in tcp) || !("resume" in tcp)) return expect.fail("no TCP socket under the ws client")
        const socket = tcp as Socket
        socket.pause()
        // Each answer is ~4 MB of JSON (500 sparse 4096-dimension vectors): far more than the socket buffers hold.
        const input = Array.from({ length: 500 }, (_, i) => `text ${i}`)
        for (let i = 0; i < 4; i++) client.send({ type: "embedding", request_id: `big-${i}`, payload: { input } })

        yield* Wait.waitFor(() => logLines(child.output(), DROPPED).length > droppedBefore, {
          message: "the server to log that it dropped the client",
          timeout: "30 seconds"
        })
        // The slot is given back; the bystander still talks to the server.
        yield* awaitHealth(http, "1 client (the bystander)", (body) => body["clients"] === 1)
        yield* pingRoundTrip(bystander, "bystander")
        socket.resume()
        const closed = yield* client.closed
        expect(closed.code).toBe(1006)
        // Once, however many frames were still waiting for it.
        yield* Wait.expectNothingWithin("500 millis", () => logLines(child.output(), DROPPED).length > droppedBefore + 1, {
          message: "a second 'Dropping a client' line"
        })
        const lines = logLines(child.output(), DROPPED).slice(droppedBefore)
        expect(lines).toHaveLength(1)
        expect(lines[0]?.["logLevel"]).toBe("WARN")
        expect(lines[0]?.["annotations"]).toMatchObject({ transport: "ws" })
        expect(child.child.exitCode).toBeNull()
      }), { timeout: 60_000 })
  })

  // Its own child: the test ends it with SIGTERM.
  layer(childLayer({ SHUTDOWN_GRACE_SECONDS: "1" }), { excludeTestServices: true, timeout: CHILD_STARTUP })(
    "child process, SHUTDOWN_GRACE_SECONDS=1",
    (it) => {
      it.scoped("after a malformed upgrade, SIGTERM makes the process exit with code 0 within grace + 3 s", () =>
        Effect.gen(function*() {
          const child = yield* Child
          const { http, port } = childUrls(child)
          const response = yield* rawExchange(port, upgradeRequest(port, "/ws", ["Sec-WebSocket-Protocol: ,,,"]), {
            message: "the answer to a malformed upgrade"
          })
          expect(response.status).toBe(400)
          // The slot taken for it was given back.
          yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
          const signalledAt = Date.now()
          child.child.kill("SIGTERM")
          const code = yield* Wait.awaitEvent(Effect.promise(() => child.exited), {
            message: "the server process to exit after SIGTERM",
            timeout: "10 seconds"
          })
          const elapsed = Date.now() - signalledAt
          expect(code).toBe(0)
          expect(elapsed).toBeLessThan(1000 + 3000)
          const [shuttingDown] = logLines(child.output(), "Shutting down")
          expect(shuttingDown?.["annotations"]).toMatchObject({ clients: 0, in_flight: 0 })
        }), { timeout: 60_000 })
    }
  )

  layer(TestServer.layer({ env: { MAX_CONNECTIONS: "3" } }), { excludeTestServices: true })("MAX_CONNECTIONS=3", (it) => {
    it.scoped("30 upgrades with a malformed Sec-WebSocket-Protocol each get ws's 400 and leave no slot taken", () =>
      Effect.gen(function*() {
        const { http, port, ws } = yield* TestServer.urls
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
        const protocols = [",,,", "a b c", "chat, chat"]
        for (let i = 0; i < 30; i++) {
          const path = i % 2 === 0 ? "/ws" : "/rpc"
          const protocol = protocols[i % protocols.length]!
          const response = yield* rawExchange(port, upgradeRequest(port, path, [`Sec-WebSocket-Protocol: ${protocol}`]), {
            message: `the answer to upgrade ${i} (${path}, protocol "${protocol}")`
          })
          expect(response.status, `upgrade ${i} (${path}, protocol "${protocol}")`).toBe(400)
        }
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
        // Every slot is free: MAX_CONNECTIONS clients connect and are served, and the limit still holds.
        const clients = yield* Effect.all([WsClient.connect(ws), WsClient.connect(ws), WsClient.connect(ws)])
        yield* Effect.forEach(clients, (client, i) => pingRoundTrip(client, `normal-${i}`))
        const refused = yield* Effect.flip(WsClient.connect(ws))
        expect(refused.message).toContain("503")
        yield* Effect.forEach(clients, (client) => client.close())
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
      }))

    it.scoped("upgrade requests whose client leaves before the answer leave no slot taken", () =>
      Effect.gen(function*() {
        const { http, port, ws } = yield* TestServer.urls
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
        for (let i = 0; i < 10; i++) {
          yield* Effect.async<void>((resume) => {
            const socket = connectTcp(port, "127.0.0.1", () => {
              socket.end(upgradeRequest(port, i % 2 === 0 ? "/ws" : "/rpc"))
              socket.destroy()
            })
            socket.on("error", () => {})
            socket.on("close", () => resume(Effect.void))
          })
        }
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
        const clients = yield* Effect.all([WsClient.connect(ws), WsClient.connect(ws), WsClient.connect(ws)])
        yield* Effect.forEach(clients, (client, i) => pingRoundTrip(client, `normal-${i}`))
      }))
  })

  describe("admission control (MAX_CONCURRENT_STREAMS=1, fake upstream)", () => {
    const freshFake = Effect.tap(FakeOpenAIService, (fake) => Effect.sync(() => fake.reset()))
    const messages = [{ role: "user" as const, content: "hello" }]
    const busy = { category: "overloaded", code: "server_busy", retryable: true }

    /** Queues an upstream stream that answers only once `release` is called. */
    const heldStream = Effect.gen(function*() {
      const fake = yield* freshFake
      let release!: () => void
      const gate = new Promise<void>((resolve) => {
        release = resolve
      })
      fake.enqueue(Behaviour.respond(async () => {
        await gate
        return Behaviour.stream(textChunks("held then released"))
      }))
      return { fake, release }
    })

    const inFlight = (http: string, n: number) => awaitHealth(http, `in_flight ${n}`, (body) => body["in_flight"] === n)

    layer(TestServer.layerWithFakeUpstream({ MAX_CONCURRENT_STREAMS: "1" }), { excludeTestServices: true })("one model call at a time", (it) => {
      it.scoped("beyond the limit model calls get overloaded/server_busy (retryable) at once; pings are answered; then a new stream is admitted", () =>
        Effect.gen(function*() {
          const { http, ws } = yield* TestServer.urls
          const { fake, release } = yield* heldStream
          const client = yield* WsClient.connect(ws)
          const other = yield* WsClient.connect(ws)
          client.send({ type: "chat_completion_stream", request_id: "held", payload: { messages } })
          yield* fake.awaitRequests(1)

          // Every kind of model call is refused, on this connection and on any other.
          for (const [who, frame] of [
            [client, { type: "chat_completion_stream", request_id: "second", payload: { messages } }],
            [client, { type: "chat_completion", request_id: "chat", payload: { messages } }],
            [client, { type: "embedding", request_id: "embed", payload: { input: "text" } }],
            [other, { type: "chat_completion_stream", request_id: "other", payload: { messages } }]
          ] as const) {
            const frames = yield* who.request(frame, "5 seconds")
            expect(frames, frame.request_id).toHaveLength(1)
            const [error] = frames
            if (error === undefined || !isError(error)) return expect.fail(`expected an error frame, got ${JSON.stringify(frames)}`)
            expect(error.data, frame.request_id).toEqual(busy)
          }
          // Refused calls never reach the upstream; requests that are not model calls are served.
          expect(fake.requestCount).toBe(1)
          yield* pingRoundTrip(client, "ping")
          yield* pingRoundTrip(other, "other-ping")
          const tools = yield* client.request({ type: "tools_list", request_id: "tools" })
          expect(tools.map((frame) => frame.type)).toEqual(["tools_list_response"])

          release()
          const held = yield* client.collect("held")
          expect(held.at(-1)?.type).toBe("chat_completion_stream_end")
          expect(held.filter(isError)).toEqual([])
          yield* inFlight(http, 0)

          const after = yield* client.request({ type: "chat_completion_stream", request_id: "after", payload: { messages } })
          expect(after.at(-1)?.type).toBe("chat_completion_stream_end")
          const retried = yield* other.request({ type: "embedding", request_id: "embed-again", payload: { input: "text" } })
          expect(retried.map((frame) => frame.type)).toEqual(["embedding_response"])
        }))

      it.scoped("/health reports in_flight 1 while a stream is held and 0 after it ends", () =>
        Effect.gen(function*() {
          const { http, ws } = yield* TestServer.urls
          yield* inFlight(http, 0)
          const { fake, release } = yield* heldStream
          const client = yield* WsClient.connect(ws)
          client.send({ type: "chat_completion_stream", request_id: "held", payload: { messages } })
          yield* fake.awaitRequests(1)
          const health = yield* inFlight(http, 1)
          expect(health.body).toMatchObject({ status: "ok", clients: 1, in_flight: 1 })
          release()
          yield* client.collect("held")
          yield* inFlight(http, 0)
        }))

      it.scoped("a held stream that is cancelled, or whose client leaves, gives its slot back", () =>
        Effect.gen(function*() {
          const { http, ws } = yield* TestServer.urls
          const fake = yield* freshFake
          const client = yield* WsClient.connect(ws)
          fake.enqueue(Behaviour.stream(textChunks("one two three four"), { stallAfter: 1 }))
          client.send({ type: "chat_completion_stream", request_id: "stalled", payload: { messages } })
          yield* client.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "stalled"))
          const [refused] = yield* client.request({ type: "chat_completion", request_id: "refused", payload: { messages } })
          expect(refused?.type === "error" ? refused.data : refused).toEqual(busy)
          yield* client.request({ type: "cancel", request_id: "cancel", payload: { request_id: "stalled" } })
          const admitted = yield* client.request({ type: "chat_completion", request_id: "admitted", payload: { messages } })
          expect(admitted.map((frame) => frame.type)).toEqual(["chat_completion_response"])

          const leaving = yield* WsClient.connect(ws)
          fake.enqueue(Behaviour.stream(textChunks("one two three four"), { stallAfter: 1 }))
          leaving.send({ type: "chat_completion_stream", request_id: "stalled-2", payload: { messages } })
          yield* leaving.waitFor(WsClient.frameOf("chat_completion_stream_chunk", "stalled-2"))
          yield* leaving.close()
          yield* inFlight(http, 0)
          const again = yield* client.request({ type: "chat_completion_stream", request_id: "again", payload: { messages } })
          expect(again.at(-1)?.type).toBe("chat_completion_stream_end")
        }))
    })
  })

  layer(TestServer.layer({ env: { SERVER_READ_TIMEOUT: "1" } }), { excludeTestServices: true })("SERVER_READ_TIMEOUT=1", (it) => {
    const incomplete = (port: number, path: string) => `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAccept: */*\r\n`

    for (const path of ["/health", "/ws"]) {
      it.scoped(`an incomplete request head for ${path} gets its 408 (or is closed) within 3 s`, () =>
        Effect.gen(function*() {
          const { port } = yield* TestServer.urls
          const response = yield* rawExchange(port, incomplete(port, path), { message: "the server to end an incomplete request" })
          expect([0, 408]).toContain(response.status)
          expect(response.elapsedMs).toBeGreaterThanOrEqual(500)
          expect(response.elapsedMs).toBeLessThan(3000)
        }))
    }

    it.scoped("a head trickled in one header line at a time is cut off within 3 s too", () =>
      Effect.gen(function*() {
        const { port } = yield* TestServer.urls
        const response = yield* rawExchange(
          port,
          { trickle: [incomplete(port, "/health"), ...Array.from({ length: 100 }, (_, i) => `X-Slow-${i}: yes\r\n`)], every: "100 millis" },
          { message: "the server to end a trickled request" }
        )
        expect([0, 408]).toContain(response.status)
        expect(response.elapsedMs).toBeLessThan(3000)
      }))

    it.scoped("complete requests are still answered", () =>
      Effect.gen(function*() {
        const { http, ws } = yield* TestServer.urls
        expect((yield* getHealth(http)).status).toBe(200)
        const client = yield* WsClient.connect(ws)
        yield* pingRoundTrip(client, "ping")
      }))
  })

  layer(TestServer.layer({ env: { AUTH_TOKENS: "secret" } }), { excludeTestServices: true })("AUTH_TOKENS=secret", (it) => {
    it.scoped("an upgrade without a valid token gets 401 with the JSON body and www-authenticate: Bearer, and takes no slot", () =>
      Effect.gen(function*() {
        const { http, port } = yield* TestServer.urls
        const attempts: ReadonlyArray<readonly [path: string, headers: ReadonlyArray<string>]> = [
          ["/ws", []],
          ["/rpc", []],
          ["/ws?token=wrong", []],
          ["/rpc?token=", []],
          ["/ws", ["Authorization: Bearer wrong"]],
          ["/rpc", ["Authorization: Basic c2VjcmV0"]]
        ]
        for (const [path, headers] of attempts) {
          const label = `${path} ${headers.join(" ")}`
          const response = yield* rawExchange(port, upgradeRequest(port, path, headers), { message: `the answer to ${label}` })
          expect(response.status, label).toBe(401)
          expect(response.headers["www-authenticate"], label).toBe("Bearer")
          expect(response.headers["content-type"], label).toContain("application/json")
          // The same body as the router's 401 for the other endpoints.
          expect(JSON.parse(response.body), label).toEqual(Auth.unauthorizedBody)
        }
        yield* awaitHealth(http, "0 clients", (body) => body["clients"] === 0)
      }))

    it.scoped("with ?token=secret (or the Bearer header) the upgrade succeeds; /health stays open", () =>
      Effect.gen(function*() {
        const { http, ws } = yield* TestServer.urls
        const byQuery = yield* WsClient.connect(`${ws}?token=secret`)
        yield* pingRoundTrip(byQuery, "query")
        const byHeader = yield* WsClient.connect(ws, { headers: { Authorization: "Bearer secret" } })
        yield* pingRoundTrip(byHeader, "header")
        const refused = yield* Effect.flip(WsClient.connect(ws))
        expect(refused.message).toContain("401")
        const health = yield* getHealth(http)
        expect(health.status).toBe(200)
        expect(health.body).toMatchObject({ status: "ok", clients: 2 })
      }))
  })
})
