/**
 * The client side of the benchmarks: WebSocket connections speaking the /ws
 * envelope, and the workloads (streams, request windows, direct upstream
 * calls). Every wait has a deadline and every loop a bound; a request that
 * fails or never ends is counted, never waited on forever.
 *
 * Frames are not fully parsed (that would make the client, which shares the
 * machine, the bottleneck): the envelope's `type` and `request_id` are read
 * with `indexOf`, and a chunk is a content chunk when it carries a non-empty
 * `"content":"..."`. Stream frames carry `seq` (1, 2, 3, ... per request);
 * a resumable stream's first frame is `chat_completion_stream_start`, which
 * is counted apart and is neither a content chunk nor the stream's end.
 */
import { Agent, request } from "node:http"
import WebSocket from "ws"

export interface Frame {
  readonly type: string
  readonly requestId: string
  readonly text: string
}

const field = (text: string, name: string): string => {
  const key = `"${name}":"`
  const at = text.indexOf(key)
  if (at === -1) return ""
  const start = at + key.length
  const end = text.indexOf("\"", start)
  return end === -1 ? "" : text.slice(start, end)
}

/** The unsigned integer after `"name":`, or -1 when there is none. */
const intField = (text: string, name: string): number => {
  const key = `"${name}":`
  const at = text.indexOf(key)
  if (at === -1) return -1
  let n = -1
  for (let i = at + key.length; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c < 48 || c > 57) break
    n = (n === -1 ? 0 : n * 10) + (c - 48)
  }
  return n
}

/** The first frame of a resumable stream (`data.stream_id`): not a chunk, not the end. */
export const STREAM_START = "chat_completion_stream_start"

/** A content chunk carries `"content":"X...` with at least one character. */
export const hasContent = (text: string): boolean => {
  for (let at = text.indexOf("\"content\":\""); at !== -1; at = text.indexOf("\"content\":\"", at + 11)) {
    if (text.charCodeAt(at + 11) !== 34) return true
  }
  return false
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export class Conn {
  private readonly handlers = new Map<string, (frame: Frame) => void>()
  /** Frames that matched no handler (late answers, heartbeats). */
  stray = 0
  closed = false

  private constructor(readonly socket: WebSocket) {
    socket.on("message", (data, isBinary) => {
      if (isBinary) return
      const text = String(data)
      const frame: Frame = { type: field(text, "type"), requestId: field(text, "request_id"), text }
      const handler = this.handlers.get(frame.requestId)
      if (handler === undefined) this.stray++
      else handler(frame)
    })
    socket.on("close", () => {
      this.closed = true
      for (const handler of [...this.handlers.values()]) handler({ type: "closed", requestId: "", text: "" })
      this.handlers.clear()
    })
    socket.on("error", () => {})
  }

  static open(url: string, timeoutMs = 15_000): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: timeoutMs })
      const timer = setTimeout(() => {
        socket.terminate()
        reject(new Error("connect timed out"))
      }, timeoutMs + 1_000)
      socket.once("open", () => {
        clearTimeout(timer)
        resolve(new Conn(socket))
      })
      socket.once("error", (error) => {
        clearTimeout(timer)
        reject(error)
      })
      socket.once("unexpected-response", (_req, res) => {
        clearTimeout(timer)
        socket.terminate()
        reject(new Error(`upgrade refused: HTTP ${res.statusCode ?? "?"}`))
      })
    })
  }

  get open(): boolean {
    return !this.closed && this.socket.readyState === WebSocket.OPEN
  }

  /** Routes the frames of `requestId` to `handler` until `off`. A closed connection sends a `closed` frame. */
  on(requestId: string, handler: (frame: Frame) => void): void {
    this.handlers.set(requestId, handler)
  }

  off(requestId: string): void {
    this.handlers.delete(requestId)
  }

  send(frame: object): void {
    if (this.open) this.socket.send(JSON.stringify(frame))
  }

  close(): void {
    this.socket.close()
  }

  terminate(): void {
    this.socket.terminate()
  }
}

/** Opens `count` connections, `batch` at a time; failures are counted, not thrown. */
export const openMany = async (url: string, count: number, batch = 200, deadlineMs = 120_000) => {
  const conns: Array<Conn> = []
  const errors: Array<string> = []
  const deadline = Date.now() + deadlineMs
  for (let i = 0; i < count; i += batch) {
    if (Date.now() >= deadline) {
      errors.push(`deadline: ${count - i} connections not attempted`)
      break
    }
    const results = await Promise.allSettled(Array.from({ length: Math.min(batch, count - i) }, () => Conn.open(url)))
    for (const result of results) {
      if (result.status === "fulfilled") conns.push(result.value)
      else errors.push(result.reason instanceof Error ? result.reason.message : String(result.reason))
    }
  }
  return { conns, failed: count - conns.length, errors: summarize(errors) }
}

export const closeAll = async (conns: ReadonlyArray<Conn>, deadlineMs = 3_000) => {
  for (const conn of conns) conn.terminate()
  const deadline = Date.now() + deadlineMs
  while (conns.some((c) => !c.closed) && Date.now() < deadline) await sleep(20)
}

/** "message ×count" for the distinct messages, the most frequent first (at most 5). */
export const summarize = (errors: ReadonlyArray<string>): Array<string> => {
  const counts = new Map<string, number>()
  for (const e of errors) counts.set(e, (counts.get(e) ?? 0) + 1)
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([e, n]) => `${e} ×${n}`)
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

export interface StreamResult {
  /** Milliseconds from send to the first content chunk, one per stream that had one. */
  readonly ttfts: Array<number>
  readonly contentChunks: number
  readonly completed: number
  readonly failed: number
  readonly errors: Array<string>
  /** Sum of the rounds' durations (first send to last end). */
  readonly wallMs: number
  /** `chat_completion_stream_start` frames with a `stream_id` (one per resumable stream). */
  readonly startFrames: number
  /** Every frame received for the streams (start, chunks, end or error). */
  readonly frames: number
  /** Frames whose `seq` was missing or not the previous one + 1 (the first is 1). */
  readonly seqErrors: number
}

export const streamPayload = (model?: string, resumable = false) => ({
  messages: [{ role: "user", content: "Write a few words." }],
  ...(model === undefined ? {} : { model }),
  ...(resumable ? { resumable: true } : {})
})

/**
 * Each connection runs one stream per round, all at once; a round ends when
 * every stream has ended or failed, or after `roundDeadlineMs`.
 */
export const runStreams = async (
  conns: ReadonlyArray<Conn>,
  rounds: number,
  options: {
    readonly roundDeadlineMs: number
    readonly model?: string
    readonly tag: string
    /** `"resumable": true` in the payload: each stream starts with a `chat_completion_stream_start` frame. */
    readonly resumable?: boolean
  }
): Promise<StreamResult> => {
  const ttfts: Array<number> = []
  const errors: Array<string> = []
  let contentChunks = 0
  let completed = 0
  let wallMs = 0
  let startFrames = 0
  let frames = 0
  let seqErrors = 0
  const payload = streamPayload(options.model, options.resumable === true)
  for (let round = 0; round < rounds; round++) {
    const started = performance.now()
    let pending = 0
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        errors.push(...Array.from({ length: pending }, () => "no end within the round deadline"))
        resolve()
      }, options.roundDeadlineMs)
      const finish = () => {
        if (--pending === 0) {
          clearTimeout(timer)
          resolve()
        }
      }
      conns.forEach((conn, i) => {
        if (!conn.open) {
          errors.push("connection closed")
          return
        }
        const requestId = `${options.tag}-${round}-${i}`
        const sentAt = performance.now()
        let first = true
        let seq = 0
        pending++
        conn.on(requestId, (frame) => {
          if (frame.type !== "closed") {
            frames++
            const n = intField(frame.text, "seq")
            if (n !== seq + 1) seqErrors++
            seq = n
          }
          if (frame.type === STREAM_START) {
            if (field(frame.text, "stream_id") !== "") startFrames++
            return
          }
          if (frame.type === "chat_completion_stream_chunk") {
            if (hasContent(frame.text)) {
              contentChunks++
              if (first) {
                first = false
                ttfts.push(performance.now() - sentAt)
              }
            }
            return
          }
          conn.off(requestId)
          if (frame.type === "chat_completion_stream_end") completed++
          else errors.push(frame.type === "error" ? `error frame: ${field(frame.text, "code")}` : `connection ${frame.type}`)
          finish()
        })
        conn.send({ type: "chat_completion_stream", request_id: requestId, payload })
      })
      if (pending === 0) {
        clearTimeout(timer)
        resolve()
      }
    })
    for (let i = 0; i < conns.length; i++) conns[i]?.off(`${options.tag}-${round}-${i}`)
    wallMs += performance.now() - started
  }
  return { ttfts, contentChunks, completed, failed: errors.length, errors: summarize(errors), wallMs, startFrames, frames, seqErrors }
}

// ---------------------------------------------------------------------------
// Request windows (pings, embeddings)
// ---------------------------------------------------------------------------

export interface WindowResult {
  readonly answered: number
  readonly failed: number
  readonly errors: Array<string>
  readonly wallMs: number
}

/**
 * Each connection keeps `window` requests in flight until it has sent
 * `perConnection`; `okType` is the answer that counts as success.
 */
export const runWindowed = async (
  conns: ReadonlyArray<Conn>,
  options: {
    readonly window: number
    readonly perConnection: number
    readonly frame: (requestId: string) => object
    readonly okType: string
    readonly deadlineMs: number
    /** Stop sending new requests after this long (those in flight are still awaited). */
    readonly budgetMs?: number
    readonly tag: string
  }
): Promise<WindowResult> => {
  let answered = 0
  const errors: Array<string> = []
  const started = performance.now()
  const stopSendingAt = started + (options.budgetMs ?? Number.POSITIVE_INFINITY)
  await Promise.all(conns.map((conn, c) =>
    new Promise<void>((resolve) => {
      let sent = 0
      let done = 0
      let settled = false
      const pending = new Set<string>()
      const settle = () => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        for (const requestId of pending) conn.off(requestId)
        resolve()
      }
      const timer = setTimeout(() => {
        errors.push(...Array.from({ length: sent - done }, () => "no answer within the deadline"))
        settle()
      }, options.deadlineMs)
      const fill = () => {
        if (settled) return
        if (!conn.open) {
          errors.push(...Array.from({ length: sent - done }, () => "connection closed"))
          return settle()
        }
        if (performance.now() >= stopSendingAt) {
          if (done === sent) settle()
          return
        }
        while (sent - done < options.window && sent < options.perConnection) {
          const requestId = `${options.tag}-${c}-${sent++}`
          pending.add(requestId)
          conn.on(requestId, (frame) => {
            conn.off(requestId)
            pending.delete(requestId)
            if (settled) return
            done++
            if (frame.type === options.okType) answered++
            else if (frame.type === "closed") {
              done--
              return fill()
            } else errors.push(frame.type === "error" ? `error frame: ${field(frame.text, "code")}` : `connection ${frame.type}`)
            if (done === options.perConnection) settle()
            else fill()
          })
          conn.send(options.frame(requestId))
        }
      }
      if (options.perConnection === 0) settle()
      else fill()
    })
  ))
  return { answered, failed: errors.length, errors: summarize(errors), wallMs: performance.now() - started }
}

// ---------------------------------------------------------------------------
// Calling the upstream directly
// ---------------------------------------------------------------------------

const directAgent = new Agent({ keepAlive: true })

/** One streamed completion straight from the upstream over node:http; resolves with the time to the first content chunk. */
export const directStream = (baseUrl: string, timeoutMs = 10_000): Promise<number> =>
  new Promise((resolve, reject) => {
    const url = new URL(`${baseUrl.replace(/\/$/, "")}/chat/completions`)
    const body = JSON.stringify({
      ...streamPayload("gpt-4o-mini"),
      stream: true,
      stream_options: { include_usage: true }
    })
    const sentAt = performance.now()
    let ttft = Number.NaN
    const req = request({
      agent: directAgent,
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      method: "POST",
      timeout: timeoutMs,
      headers: {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        authorization: "Bearer sk-bench"
      }
    }, (res) => {
      res.setEncoding("utf8")
      res.on("data", (piece: string) => {
        if (Number.isNaN(ttft) && hasContent(piece)) ttft = performance.now() - sentAt
      })
      res.on("end", () => (Number.isNaN(ttft) ? reject(new Error("no content chunk")) : resolve(ttft)))
      res.on("error", reject)
    })
    req.on("timeout", () => req.destroy(new Error("direct stream timed out")))
    req.on("error", reject)
    req.end(body)
  })
