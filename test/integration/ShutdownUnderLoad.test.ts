/**
 * A saturated server stays responsive: the real process (`node src/main.ts`)
 * streams as fast as a fake upstream sends (far more than it can serve), and
 * /health, SIGTERM and the drain still happen promptly, with every request
 * ending in its final frame. Before the speed and hardening work, /health
 * took 10 s or more here and the drain began 14 s after SIGTERM.
 */
import { describe, expect, it } from "@effect/vitest"
import WebSocket from "ws"
import * as FakeUpstream from "../../bench/FakeUpstream.js"
import * as ServerProcess from "../support/ServerProcess.js"
import * as Wait from "../support/Wait.js"

const CONNECTIONS = 8
const STREAMS_PER_CONNECTION = 5
/** Effectively endless streams, a chunk every millisecond each. */
const FLOOD_MODEL = "fake:chunks=100000,interval=1,delay=1"
const GRACE_SECONDS = 1

interface Client {
  readonly socket: WebSocket
  /** Request id → type of its final frame (once it came). */
  readonly finals: Map<string, { readonly type: string; readonly code?: string }>
  chunks: number
  closeCode: number | undefined
}

const FINAL = /^\{"type":"(error|chat_completion_stream_end|pong|[a-z_]+_response)"/

const connect = (url: string) =>
  new Promise<Client>((resolve, reject) => {
    const socket = new WebSocket(url)
    const client: Client = { socket, finals: new Map(), chunks: 0, closeCode: undefined }
    socket.on("message", (data) => {
      const text = String(data)
      if (text.startsWith("{\"type\":\"chat_completion_stream_chunk\"")) {
        client.chunks++
        return
      }
      if (!FINAL.test(text)) return
      const frame: { type: string; request_id: string | null; data?: { code?: string } } = JSON.parse(text)
      if (frame.request_id !== null) {
        client.finals.set(frame.request_id, { type: frame.type, ...(frame.data?.code ? { code: frame.data.code } : {}) })
      }
    })
    socket.once("close", (code) => {
      client.closeCode = code
    })
    socket.once("open", () => resolve(client))
    socket.once("error", reject)
  })

const timedHealth = async (port: number): Promise<{ readonly status: number; readonly ms: number }> => {
  const started = performance.now()
  const response = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(10_000) })
  await response.text()
  return { status: response.status, ms: performance.now() - started }
}

describe("a saturated server", () => {
  it("answers /health promptly, drains within the grace period on SIGTERM, and every request gets its final frame", async () => {
    const upstream = await FakeUpstream.start({})
    const server = await ServerProcess.start({
      env: {
        LLM_PROVIDER: "openai",
        OPENAI_API_KEY: "sk-load-test",
        OPENAI_BASE_URL: upstream.baseUrl,
        SHUTDOWN_GRACE_SECONDS: String(GRACE_SECONDS),
        LOG_LEVEL: "info"
      },
      timeoutMs: 60_000
    })
    const clients: Array<Client> = []
    try {
      for (let i = 0; i < CONNECTIONS; i++) clients.push(await connect(`ws://127.0.0.1:${server.port}/ws`))
      const sent: Array<{ readonly client: Client; readonly id: string }> = []
      for (const [c, client] of clients.entries()) {
        for (let s = 0; s < STREAMS_PER_CONNECTION; s++) {
          const id = `flood-${c}-${s}`
          client.socket.send(JSON.stringify({
            type: "chat_completion_stream",
            request_id: id,
            payload: { model: FLOOD_MODEL, messages: [{ role: "user", content: "go" }] }
          }))
          sent.push({ client, id })
        }
      }
      // Saturated: every stream is flowing.
      await Wait.waitForPromise(() => clients.every((client) => client.chunks > 200), {
        message: "every connection to be receiving chunks"
      })

      const health = await timedHealth(server.port)
      expect(health.status).toBe(200)
      expect(health.ms).toBeLessThan(2_000)

      const signalledAt = performance.now()
      server.child.kill("SIGTERM")
      // A request sent after the signal still gets an answer.
      const late = clients[0]!
      late.socket.send(JSON.stringify({
        type: "chat_completion_stream",
        request_id: "after-sigterm",
        payload: { model: FLOOD_MODEL, messages: [{ role: "user", content: "go" }] }
      }))
      sent.push({ client: late, id: "after-sigterm" })

      const code = await Wait.awaitEventPromise(server.exited, {
        message: "the server to exit after SIGTERM",
        timeout: `${GRACE_SECONDS + 5} seconds`
      })
      const exitMs = performance.now() - signalledAt
      expect(code).toBe(0)
      expect(exitMs).toBeLessThan(GRACE_SECONDS * 1000 + 3_000)

      await Wait.waitForPromise(() => clients.every((client) => client.closeCode !== undefined), {
        message: "every connection to be closed"
      })
      for (const { client, id } of sent) {
        const final = client.finals.get(id)
        expect(final, id).toEqual({ type: "error", code: "shutting_down" })
      }
      for (const client of clients) expect(client.closeCode).toBe(1001)
    } finally {
      for (const client of clients) client.socket.terminate()
      if (server.child.exitCode === null) server.child.kill("SIGKILL")
      await upstream.close()
    }
  }, 60_000)
})
