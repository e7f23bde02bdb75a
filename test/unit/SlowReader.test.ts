/**
 * `SlowReader.dropWhenNotReading` on a real ws pair: a client that stops
 * reading is dropped after the write timeout, and a client that reads gets
 * every frame in order and stays connected once it has caught up.
 */
import { Socket } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Exit } from "effect"
import WebSocket, { WebSocketServer } from "ws"
import { dropWhenNotReading } from "../../src/server/SlowReader.js"
import { underlyingSocket } from "../../src/server/WsConnection.js"

const LIMITS = { maxBufferedBytes: 64 * 1024, writeTimeout: Duration.millis(400) }
/** Far more than the OS buffers of a local connection hold, so that most of it waits in ws. */
const FRAMES = 48
const FRAME = "x".repeat(256 * 1024)

/** A connected ws pair on a random port, closed with the scope. */
const connected = Effect.acquireRelease(
  Effect.async<{ server: WebSocketServer; serverSide: WebSocket; client: WebSocket }>((resume) => {
    const server = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: false })
    server.once("listening", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      const client = new WebSocket(`ws://127.0.0.1:${port}`)
      server.once("connection", (serverSide) => {
        const ready = () => resume(Effect.succeed({ server, serverSide, client }))
        if (client.readyState === client.OPEN) ready()
        else client.once("open", ready)
      })
    })
  }),
  ({ client, server, serverSide }) =>
    Effect.sync(() => {
      client.terminate()
      serverSide.terminate()
      server.close()
    })
)

/** The server side as the platform Socket, watched, with its reader running and its writer ready. */
const watched = (serverSide: WebSocket, limits = LIMITS) =>
  Effect.gen(function*() {
    const dropped = yield* Deferred.make<number>()
    const startedAt = Date.now()
    const socket = yield* Socket.fromWebSocket(
      Effect.succeed(serverSide as unknown as globalThis.WebSocket),
      { closeCodeIsError: () => false }
    )
    const watchedSocket = dropWhenNotReading(serverSide, socket, limits, () => {
      Deferred.unsafeDone(dropped, Exit.succeed(Date.now() - startedAt))
    })
    yield* Effect.forkScoped(watchedSocket.runRaw(() => {}))
    const write = yield* watchedSocket.writer
    return { dropped, write }
  })

const closed = (ws: WebSocket) =>
  Effect.async<number>((resume) => {
    if (ws.readyState === ws.CLOSED) return resume(Effect.succeed(-1))
    ws.once("close", (code) => resume(Effect.succeed(code)))
  })

describe("SlowReader", () => {
  it.scopedLive("drops a client that stops reading after the write timeout", () =>
    Effect.gen(function*() {
      const { client, serverSide } = yield* connected
      const tcp = underlyingSocket(client)
      if (tcp === undefined) return expect.fail("no TCP socket under the ws client")
      tcp.pause()
      const { dropped, write } = yield* watched(serverSide)
      for (let i = 0; i < FRAMES; i++) yield* write(FRAME)
      expect(serverSide.bufferedAmount).toBeGreaterThan(LIMITS.maxBufferedBytes)

      const after = yield* Deferred.await(dropped).pipe(Effect.timeout("5 seconds"))
      expect(after).toBeGreaterThanOrEqual(Duration.toMillis(LIMITS.writeTimeout))
      expect(yield* closed(serverSide).pipe(Effect.timeout("2 seconds"))).toBe(1006)
    }))

  it.scopedLive("a client that reads gets every frame in order and is not dropped once it has caught up", () =>
    Effect.gen(function*() {
      const { client, serverSide } = yield* connected
      // A reader that keeps up, even on a loaded machine, within this timeout.
      const limits = { ...LIMITS, writeTimeout: Duration.seconds(2) }
      const frames = 16
      const received: Array<string> = []
      const arrived = (count: number) =>
        Effect.async<void>((resume) => {
          const check = () => {
            if (received.length < count) return
            client.off("message", check)
            resume(Effect.void)
          }
          client.on("message", check)
          check()
        })
      client.on("message", (data) => {
        received.push(data.toString().slice(0, 8))
      })
      const { dropped, write } = yield* watched(serverSide, limits)
      // Numbered frames: some leave through the platform writer, some (over the limit) straight through ws.
      for (let i = 0; i < frames; i++) yield* write(`${String(i).padStart(8, "0")}${FRAME}`)
      expect(serverSide.bufferedAmount).toBeGreaterThan(limits.maxBufferedBytes)

      yield* arrived(frames).pipe(Effect.timeout("10 seconds"))
      expect(received).toEqual(Array.from({ length: frames }, (_, i) => String(i).padStart(8, "0")))
      // Nothing within the write timeout and a bit: the timer armed while it was behind is gone.
      yield* Effect.sleep(Duration.sum(limits.writeTimeout, Duration.millis(500)))
      expect(yield* Deferred.isDone(dropped)).toBe(false)
      expect(serverSide.readyState).toBe(serverSide.OPEN)
      // And small frames under the limit still arrive.
      yield* write("0000last")
      yield* arrived(frames + 1).pipe(Effect.timeout("10 seconds"))
      expect(received.at(-1)).toBe("0000last")
    }))
})
