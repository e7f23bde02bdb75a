/**
 * A fast fake OpenAI-compatible upstream for the benchmarks, on plain
 * `node:http` (127.0.0.1, random port unless told otherwise).
 *
 * - `POST /v1/chat/completions` with `stream: true`: Server-Sent Events the
 *   way OpenAI sends them (`data: {chat.completion.chunk}\n\n`): a first chunk
 *   with the assistant role, `chunks` content chunks `chunkIntervalMs` apart
 *   (the first after `firstChunkDelayMs`), a chunk with `finish_reason: "stop"`,
 *   a usage chunk when `stream_options.include_usage` is set, then
 *   `data: [DONE]`.
 *   With `stream: false`: one `chat.completion` JSON object (after the first-chunk delay).
 * - `POST /v1/embeddings`: one `embeddingDimensions`-float embedding per input
 *   (`encoding_format: "base64"` honoured, as the openai SDK asks for it by default).
 * - `GET /stats`: request counters as JSON (started, finished, aborted by the
 *   client before the end, ...); `POST /stats/reset` zeroes them.
 *   `GET /health`: `ok`.
 *
 * A request may override the stream shape through its model name:
 * `fake:chunks=2000,interval=5,delay=20` (any subset).
 *
 * Configuration: options to `start()`, or, as a script
 * (`node --import tsx bench/FakeUpstream.ts`), the environment:
 * UPSTREAM_PORT, UPSTREAM_FIRST_CHUNK_DELAY_MS, UPSTREAM_CHUNKS,
 * UPSTREAM_CHUNK_INTERVAL_MS, UPSTREAM_EMBEDDING_DIMENSIONS. As a script it
 * prints `listening on http://127.0.0.1:PORT` and stops on SIGTERM/SIGINT.
 *
 * It has to stay far cheaper than the servers it feeds: every response body
 * is precomputed once per shape and written as ready-made strings.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { pathToFileURL } from "node:url"

export interface UpstreamOptions {
  readonly host: string
  /** 0 picks a free port. */
  readonly port: number
  readonly firstChunkDelayMs: number
  /** Content chunks per streamed completion. */
  readonly chunks: number
  readonly chunkIntervalMs: number
  readonly embeddingDimensions: number
}

export const defaults: UpstreamOptions = {
  host: "127.0.0.1",
  port: 0,
  firstChunkDelayMs: 20,
  chunks: 50,
  chunkIntervalMs: 2,
  embeddingDimensions: 1536
}

export interface UpstreamStats {
  /** Requests received on a known route (body read). */
  readonly started: number
  /** Responses completely written. */
  readonly finished: number
  /** Requests whose connection closed before the response was complete. */
  readonly aborted: number
  /** started - finished - aborted. */
  readonly active: number
  readonly chatStreams: number
  readonly chatCompletions: number
  readonly embeddings: number
  /** Unknown routes and unparseable bodies. */
  readonly rejected: number
  /** Wall-clock times (ms since the epoch, fractional) of the first and last abort since the last reset. */
  readonly firstAbortAt: number | null
  readonly lastAbortAt: number | null
}

export interface FakeUpstream {
  readonly port: number
  /** `http://127.0.0.1:PORT/v1`, for OPENAI_BASE_URL. */
  readonly baseUrl: string
  readonly stats: () => UpstreamStats
  readonly resetStats: () => void
  readonly close: () => Promise<void>
}

const numberFrom = (value: string | undefined): number | undefined => {
  if (value === undefined || value.trim() === "") return undefined
  const n = Number(value)
  return Number.isFinite(n) && n >= 0 ? n : undefined
}

/** Options from UPSTREAM_* environment variables (unset or invalid ones are left out). */
export const optionsFromEnv = (env: NodeJS.ProcessEnv = process.env): Partial<UpstreamOptions> => {
  const out: { -readonly [K in keyof UpstreamOptions]?: UpstreamOptions[K] } = {}
  const port = numberFrom(env["UPSTREAM_PORT"])
  const delay = numberFrom(env["UPSTREAM_FIRST_CHUNK_DELAY_MS"])
  const chunks = numberFrom(env["UPSTREAM_CHUNKS"])
  const interval = numberFrom(env["UPSTREAM_CHUNK_INTERVAL_MS"])
  const dimensions = numberFrom(env["UPSTREAM_EMBEDDING_DIMENSIONS"])
  if (port !== undefined) out.port = port
  if (delay !== undefined) out.firstChunkDelayMs = delay
  if (chunks !== undefined) out.chunks = Math.floor(chunks)
  if (interval !== undefined) out.chunkIntervalMs = interval
  if (dimensions !== undefined) out.embeddingDimensions = Math.max(1, Math.floor(dimensions))
  return out
}

// ---------------------------------------------------------------------------
// Precomputed bodies
// ---------------------------------------------------------------------------

const ID = "chatcmpl-bench0000000000000000000000"
const FINGERPRINT = "fp_bench00000"
const CREATED = Math.floor(Date.now() / 1000)
const PROMPT_TOKENS = 12

const token = (i: number): string => (i === 0 ? "Token0" : ` tok${i}`)

const sse = (value: unknown): string => `data: ${JSON.stringify(value)}\n\n`

const chunkObject = (model: string, delta: object, finishReason: string | null, withUsage: boolean) => ({
  id: ID,
  object: "chat.completion.chunk",
  created: CREATED,
  model,
  system_fingerprint: FINGERPRINT,
  choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
  ...(withUsage ? { usage: null } : {})
})

/**
 * The writes of one streamed completion: `parts[0]` goes out after the
 * first-chunk delay (role chunk and first content chunk), each further part
 * an interval later; the last part carries the finish chunk, the usage chunk
 * and `[DONE]`.
 */
const streamParts = (model: string, chunks: number, withUsage: boolean): ReadonlyArray<string> => {
  const content = Array.from({ length: chunks }, (_, i) => sse(chunkObject(model, { content: token(i) }, null, withUsage)))
  const role = sse(chunkObject(model, { role: "assistant", content: "", refusal: null }, null, withUsage))
  const finish = sse(chunkObject(model, {}, "stop", withUsage))
  const usage = withUsage
    ? sse({
      id: ID,
      object: "chat.completion.chunk",
      created: CREATED,
      model,
      system_fingerprint: FINGERPRINT,
      choices: [],
      usage: { prompt_tokens: PROMPT_TOKENS, completion_tokens: chunks, total_tokens: PROMPT_TOKENS + chunks }
    })
    : ""
  const tail = `${finish}${usage}data: [DONE]\n\n`
  if (content.length === 0) return [role + tail]
  const parts = [...content]
  parts[0] = role + parts[0]
  parts[parts.length - 1] = parts[parts.length - 1] + tail
  return parts
}

const completionBody = (model: string, chunks: number): string =>
  JSON.stringify({
    id: ID,
    object: "chat.completion",
    created: CREATED,
    model,
    system_fingerprint: FINGERPRINT,
    choices: [{
      index: 0,
      message: { role: "assistant", content: Array.from({ length: chunks }, (_, i) => token(i)).join(""), refusal: null },
      logprobs: null,
      finish_reason: "stop"
    }],
    usage: { prompt_tokens: PROMPT_TOKENS, completion_tokens: chunks, total_tokens: PROMPT_TOKENS + chunks }
  })

/** One embedding as a JSON array literal of float32 values (as OpenAI prints them) and as base64. */
const embeddingVector = (dimensions: number): { readonly floats: string; readonly base64: string } => {
  const values = new Float32Array(dimensions)
  for (let i = 0; i < dimensions; i++) values[i] = Math.sin(i * 12.9898 + 1) * 0.05
  return {
    floats: `[${Array.from(values, (v) => String(v)).join(",")}]`,
    base64: Buffer.from(values.buffer).toString("base64")
  }
}

/** A small bounded cache: shapes are few, but a request picks its own. */
const cached = <A>(build: (key: string) => A) => {
  const cache = new Map<string, A>()
  return (key: string): A => {
    let value = cache.get(key)
    if (value === undefined) {
      if (cache.size >= 64) cache.clear()
      value = build(key)
      cache.set(key, value)
    }
    return value
  }
}

interface Shape {
  readonly firstChunkDelayMs: number
  readonly chunks: number
  readonly chunkIntervalMs: number
}

/** `fake:chunks=2000,interval=5,delay=20` overrides the configured shape for one request. */
const shapeOf = (model: string, base: Shape): Shape => {
  if (!model.startsWith("fake:")) return base
  let { chunkIntervalMs, chunks, firstChunkDelayMs } = base
  for (const setting of model.slice(5).split(",")) {
    const [key, raw] = setting.split("=")
    const value = numberFrom(raw)
    if (value === undefined) continue
    if (key === "chunks") chunks = Math.min(100_000, Math.floor(value))
    else if (key === "interval") chunkIntervalMs = value
    else if (key === "delay") firstChunkDelayMs = value
  }
  return { chunkIntervalMs, chunks, firstChunkDelayMs }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

interface Body {
  readonly model?: unknown
  readonly stream?: unknown
  readonly stream_options?: { readonly include_usage?: unknown } | null
  readonly input?: unknown
  readonly encoding_format?: unknown
  readonly dimensions?: unknown
}

const wallClock = (): number => performance.timeOrigin + performance.now()

export const start = (options: Partial<UpstreamOptions> = {}): Promise<FakeUpstream> => {
  const config: UpstreamOptions = { ...defaults, ...options }
  const base: Shape = config
  const streams = cached((key) => {
    const [model = "", chunks = "0", usage = ""] = key.split("\u0000")
    return streamParts(model, Number(chunks), usage === "1")
  })
  const completions = cached((key) => {
    const [model = "", chunks = "0"] = key.split("\u0000")
    return completionBody(model, Number(chunks))
  })
  const vectors = cached((key) => embeddingVector(Number(key)))

  const zero = () => ({
    started: 0,
    finished: 0,
    aborted: 0,
    chatStreams: 0,
    chatCompletions: 0,
    embeddings: 0,
    rejected: 0,
    firstAbortAt: null as number | null,
    lastAbortAt: null as number | null
  })
  let counters = zero()
  const stats = (): UpstreamStats => ({
    ...counters,
    active: counters.started - counters.finished - counters.aborted
  })
  const resetStats = () => {
    counters = zero()
  }


  /** Counts the exchange; `onAbort` runs when the client leaves before the end. */
  const track = (res: ServerResponse, onAbort: () => void) => {
    counters.started++
    res.once("finish", () => {
      counters.finished++
    })
    res.once("close", () => {
      if (!res.writableFinished) {
        counters.aborted++
        const now = wallClock()
        counters.firstAbortAt ??= now
        counters.lastAbortAt = now
        onAbort()
      }
    })
  }

  const reject = (res: ServerResponse, status: number, message: string) => {
    counters.rejected++
    const body = JSON.stringify({ error: { message, type: "invalid_request_error", param: null, code: null } })
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
    res.end(body)
  }

  const json = (res: ServerResponse, body: string) => {
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
    res.end(body)
  }

  const chat = (res: ServerResponse, body: Body) => {
    const model = typeof body.model === "string" ? body.model : "gpt-4o-mini"
    const shape = shapeOf(model, base)
    let timer: NodeJS.Timeout | undefined
    track(res, () => clearTimeout(timer))
    if (body.stream !== true) {
      counters.chatCompletions++
      const text = completions(`${model}\u0000${shape.chunks}`)
      timer = setTimeout(() => json(res, text), shape.firstChunkDelayMs)
      return
    }
    counters.chatStreams++
    const withUsage = body.stream_options?.include_usage === true
    const parts = streams(`${model}\u0000${shape.chunks}\u0000${withUsage ? "1" : "0"}`)
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-request-id": "req_bench"
    })
    res.flushHeaders()
    let next = 0
    const step = () => {
      const part = parts[next++]
      if (part === undefined || res.destroyed) return
      if (next >= parts.length) res.end(part)
      else {
        res.write(part)
        timer = setTimeout(step, shape.chunkIntervalMs)
      }
    }
    timer = setTimeout(step, shape.firstChunkDelayMs)
  }

  const embeddings = (res: ServerResponse, body: Body) => {
    track(res, () => {})
    counters.embeddings++
    const input = body.input
    const count = Array.isArray(input) && input.length > 0 && typeof input[0] !== "number" ? input.length : 1
    const dimensions = typeof body.dimensions === "number" && body.dimensions >= 1
      ? Math.min(4096, Math.floor(body.dimensions))
      : config.embeddingDimensions
    const vector = vectors(String(dimensions))
    const encoded = body.encoding_format === "base64" ? `"${vector.base64}"` : vector.floats
    const model = typeof body.model === "string" ? body.model : "text-embedding-3-small"
    const items: Array<string> = []
    for (let i = 0; i < count; i++) items.push(`{"object":"embedding","index":${i},"embedding":${encoded}}`)
    const tokens = count * 9
    json(
      res,
      `{"object":"list","data":[${items.join(",")}],"model":${JSON.stringify(model)},"usage":{"prompt_tokens":${tokens},"total_tokens":${tokens}}}`
    )
  }

  const handle = (req: IncomingMessage, res: ServerResponse, raw: string) => {
    const path = (req.url ?? "/").split("?")[0] ?? "/"
    if (req.method === "GET" && path === "/stats") return json(res, JSON.stringify(stats()))
    if (req.method === "POST" && path === "/stats/reset") {
      resetStats()
      return json(res, JSON.stringify(stats()))
    }
    if (req.method === "GET" && path === "/health") return json(res, "\"ok\"")
    if (req.method !== "POST" || (path !== "/v1/chat/completions" && path !== "/v1/embeddings")) {
      return reject(res, 404, `Unknown route ${req.method ?? ""} ${path}`)
    }
    let body: Body
    try {
      const parsed: unknown = JSON.parse(raw)
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("not an object")
      body = parsed as Body
    } catch {
      return reject(res, 400, "The body is not a JSON object")
    }
    if (path === "/v1/chat/completions") chat(res, body)
    else embeddings(res, body)
  }

  const server = createServer((req, res) => {
    const pieces: Array<Buffer> = []
    req.on("data", (piece: Buffer) => pieces.push(piece))
    req.on("end", () => handle(req, res, pieces.length === 1 ? String(pieces[0]) : Buffer.concat(pieces).toString()))
  })
  // Clients keep connections alive; never be the side that closes one under them.
  server.keepAliveTimeout = 65_000
  server.headersTimeout = 66_000
  server.requestTimeout = 0

  return new Promise((resolve, rejectStart) => {
    server.once("error", rejectStart)
    server.listen({ host: config.host, port: config.port, backlog: 4096 }, () => {
      const { port } = server.address() as AddressInfo
      resolve({
        port,
        baseUrl: `http://${config.host}:${port}/v1`,
        stats,
        resetStats,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done())
            server.closeAllConnections()
          })
      })
    })
  })
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href

if (isMain) {
  const upstream = await start(optionsFromEnv())
  console.log(`listening on http://127.0.0.1:${upstream.port}`)
  const stop = () => {
    void upstream.close().then(() => process.exit(0))
    setTimeout(() => process.exit(0), 2_000).unref()
  }
  process.once("SIGTERM", stop)
  process.once("SIGINT", stop)
}
