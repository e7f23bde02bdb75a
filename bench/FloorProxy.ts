/**
 * The floor for the benchmarks: a bare proxy with `ws` and `node:http` that
 * speaks AIBase's /ws envelope protocol with no validation, no limits and no
 * backpressure, forwarding to an OpenAI-compatible upstream. What AIBase
 * costs beyond this is the price of its features and its runtime.
 *
 * - `ping` → `pong` with a timestamp.
 * - `chat_completion_stream` → POST upstream with `stream: true` (and
 *   `stream_options.include_usage`), each SSE chunk forwarded as a
 *   `chat_completion_stream_chunk` frame, then `chat_completion_stream_end`
 *   with the finish reason, the assembled content and the usage; each of
 *   these frames carries its `seq` (1, 2, 3, ...), as AIBase's do.
 * - `chat_completion` → `chat_completion_response`; `embedding` → `embedding_response`
 *   (the upstream's JSON parsed and re-serialised into the envelope).
 * - `cancel` and a client disconnect abort the upstream request at once.
 *
 * Environment: OPENAI_BASE_URL (e.g. http://127.0.0.1:PORT/v1),
 * OPENAI_API_KEY, FLOOR_PORT (default 0: a free port), FLOOR_HTTP=fetch to
 * make the upstream calls with the global `fetch` (undici) instead of
 * `node:http` with a keep-alive Agent.
 * Run: `node --import tsx bench/FloorProxy.ts`; prints
 * `listening on http://127.0.0.1:PORT` and serves ws://127.0.0.1:PORT/ws.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import WebSocket, { WebSocketServer } from "ws"
import { type Handlers, makePost } from "./FloorClient.js"

const useFetch = process.env["FLOOR_HTTP"] === "fetch"
const post = makePost({
  baseUrl: process.env["OPENAI_BASE_URL"] ?? "http://127.0.0.1:8000/v1",
  apiKey: process.env["OPENAI_API_KEY"] ?? "sk-floor",
  http: useFetch ? "fetch" : "node"
})

// ---------------------------------------------------------------------------
// The envelope protocol
// ---------------------------------------------------------------------------

interface Envelope {
  readonly type?: unknown
  readonly request_id?: unknown
  readonly payload?: unknown
}

interface Chunk {
  readonly choices?: ReadonlyArray<{
    readonly delta?: { readonly content?: string | null } | null
    readonly finish_reason?: string | null
  }>
  readonly usage?: unknown
}

const errorFrame = (requestId: string, message: string, category: string, code: string) =>
  JSON.stringify({ type: "error", request_id: requestId, error: message, data: { category, code, retryable: false } })

const serve = (socket: WebSocket) => {
  /** Abort functions of the requests in flight, by request_id. */
  const inFlight = new Map<string, () => void>()
  const send = (frame: string) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(frame)
  }

  /** Runs one upstream call for `requestId`; `onEnd` gets the whole body when `stream` is false. */
  const call = (requestId: string, path: string, body: string, handlers: Handlers) => {
    let settled = false
    const done = () => {
      settled = true
      inFlight.delete(requestId)
    }
    const abort = post(path, body, {
      onData: (text) => {
        if (!settled) handlers.onData(text)
      },
      onEnd: () => {
        if (settled) return
        done()
        handlers.onEnd()
      },
      onError: (message) => {
        if (settled) return
        done()
        handlers.onError(message)
      }
    })
    inFlight.set(requestId, () => {
      if (settled) return
      done()
      abort()
    })
  }

  const upstreamError = (requestId: string) => (message: string) =>
    send(errorFrame(requestId, message, "upstream", "upstream_error"))

  const stream = (requestId: string, payload: object) => {
    let buffered = ""
    let content = ""
    let finishReason: string | null = null
    let usage: unknown = undefined
    let seq = 0
    const line = (raw: string) => {
      const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw
      if (!text.startsWith("data:")) return
      const data = text.slice(text.charCodeAt(5) === 32 ? 6 : 5)
      if (data === "[DONE]") return
      let chunk: Chunk
      try {
        chunk = JSON.parse(data) as Chunk
      } catch {
        return
      }
      const choice = chunk.choices?.[0]
      if (choice !== undefined) {
        const delta = choice.delta?.content
        if (typeof delta === "string") content += delta
        if (typeof choice.finish_reason === "string") finishReason = choice.finish_reason
      }
      if (chunk.usage !== undefined && chunk.usage !== null) usage = chunk.usage
      send(JSON.stringify({ type: "chat_completion_stream_chunk", request_id: requestId, seq: ++seq, data: chunk }))
    }
    call(
      requestId,
      "/chat/completions",
      JSON.stringify({ ...payload, stream: true, stream_options: { include_usage: true } }),
      {
        onData: (text) => {
          buffered += text
          let start = 0
          let end: number
          while ((end = buffered.indexOf("\n", start)) !== -1) {
            if (end > start) line(buffered.slice(start, end))
            start = end + 1
          }
          buffered = start === 0 ? buffered : buffered.slice(start)
        },
        onEnd: () => {
          if (buffered.length > 0) line(buffered)
          send(JSON.stringify({
            type: "chat_completion_stream_end",
            request_id: requestId,
            seq: ++seq,
            data: usage === undefined
              ? { finish_reason: finishReason, content }
              : { finish_reason: finishReason, content, usage }
          }))
        },
        onError: upstreamError(requestId)
      }
    )
  }

  /** A non-streamed call: the upstream's JSON, parsed, as the `data` of one `type` frame. */
  const whole = (requestId: string, path: string, payload: object, type: string) => {
    let text = ""
    call(requestId, path, JSON.stringify(payload), {
      onData: (piece) => (text += piece),
      onEnd: () => {
        let data: unknown
        try {
          data = JSON.parse(text)
        } catch {
          return send(errorFrame(requestId, "The upstream answered invalid JSON", "upstream", "invalid_upstream_response"))
        }
        send(JSON.stringify({ type, request_id: requestId, data }))
      },
      onError: upstreamError(requestId)
    })
  }

  socket.on("message", (raw) => {
    let envelope: Envelope
    try {
      envelope = JSON.parse(String(raw)) as Envelope
    } catch {
      return send(errorFrame("", "The frame is not JSON", "validation", "invalid_json"))
    }
    const requestId = typeof envelope.request_id === "string" ? envelope.request_id : ""
    const payload = typeof envelope.payload === "object" && envelope.payload !== null ? envelope.payload : {}
    switch (envelope.type) {
      case "ping":
        return send(JSON.stringify({ type: "pong", request_id: requestId, data: { timestamp: new Date().toISOString() } }))
      case "chat_completion_stream":
        return stream(requestId, payload)
      case "chat_completion":
        return whole(requestId, "/chat/completions", { ...payload, stream: false }, "chat_completion_response")
      case "embedding":
        return whole(requestId, "/embeddings", payload, "embedding_response")
      case "cancel": {
        const target = (payload as { readonly request_id?: unknown }).request_id
        const abort = typeof target === "string" ? inFlight.get(target) : undefined
        if (abort !== undefined && typeof target === "string") {
          abort()
          send(errorFrame(target, "The request was cancelled by the client", "cancelled", "cancelled"))
        }
        return send(JSON.stringify({
          type: "cancel_response",
          request_id: requestId,
          data: { request_id: target, cancelled: abort !== undefined }
        }))
      }
      default:
        return send(errorFrame(requestId, `Unknown request type ${String(envelope.type)}`, "validation", "unknown_type"))
    }
  })
  socket.on("close", () => {
    for (const abort of [...inFlight.values()]) abort()
  })
  socket.on("error", () => {})
}

const server = createServer((req, res) => {
  const body = req.url === "/health" ? "{\"status\":\"ok\"}" : "{\"error\":\"not found\"}"
  res.writeHead(req.url === "/health" ? 200 : 404, { "content-type": "application/json" })
  res.end(body)
})
const wss = new WebSocketServer({ server, path: "/ws", maxPayload: 1 << 20 })
wss.on("connection", serve)

server.listen({ host: "127.0.0.1", port: Number(process.env["FLOOR_PORT"] ?? 0), backlog: 4096 }, () => {
  const { port } = server.address() as AddressInfo
  console.log(`listening on http://127.0.0.1:${port} (upstream over ${useFetch ? "fetch" : "node:http"})`)
})

const stop = () => {
  for (const client of wss.clients) client.terminate()
  server.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2_000).unref()
}
process.once("SIGTERM", stop)
process.once("SIGINT", stop)
