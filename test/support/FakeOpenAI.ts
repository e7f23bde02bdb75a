/**
 * A fake OpenAI-compatible HTTP upstream for tests: plain `node:http` on
 * 127.0.0.1 (random port), driven by the real `openai` SDK with
 * `baseURL: fake.baseUrl`. No network, no API key.
 *
 * - Records every request (method, path, lower-cased headers, parsed body,
 *   whether the client aborted it, timings).
 * - Scriptable: `enqueue(...behaviours)` — each request to a known route takes
 *   the next queued behaviour; when the queue is empty the default behaviour
 *   (an echo model) applies. Unknown routes answer 404 and invalid JSON 400
 *   without consuming the queue.
 * - Effect: `make` (scoped) / `FakeOpenAIService.Default` (layer).
 *   Plain Node: `start()` / `fake.close()`.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { Socket } from "node:net"
import { Cause, Context, Duration, Effect, Layer, type Scope } from "effect"
import type OpenAI from "openai"

// ---------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------

export interface RecordedRequest {
  /** 0-based arrival order. */
  readonly index: number
  readonly method: string
  /** Path without the query string, e.g. `/v1/chat/completions`. */
  readonly path: string
  /** Raw request URL including any query string. */
  readonly url: string
  /** Lower-cased names; repeated headers joined with ", ". */
  readonly headers: Readonly<Record<string, string>>
  /** Parsed JSON body (`undefined` when the body was empty). */
  readonly body: unknown
  /** `body` when it is a JSON object, otherwise `{}` — handy for `fields.model` etc. */
  readonly fields: Readonly<Record<string, unknown>>
  readonly rawBody: string
  /** `Date.now()` when the request was received (body fully read). */
  readonly startedAt: number
  // The fields below are updated in place as the exchange progresses.
  /** The client closed the connection before the response finished. */
  readonly aborted: boolean
  /** The response was completely written (`res.end()`). */
  readonly finished: boolean
  /** The fake itself cut the connection (`Stream.cutAfter`, `Disconnect`). */
  readonly cut: boolean
  /** Status code sent, once headers were written. */
  readonly status: number | undefined
  /** `Date.now()` when the exchange ended (finished, aborted or cut). */
  readonly endedAt: number | undefined
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] }

// ---------------------------------------------------------------------------
// Behaviours
// ---------------------------------------------------------------------------

export type Headers = Readonly<Record<string, string>>

/** A data line of an SSE stream: an object is JSON-encoded, a string is sent verbatim after `data: `. */
export type StreamChunk = object | string

export type Behaviour =
  /** The default echo model (chat, chat stream, embeddings, models). */
  | {
    readonly _tag: "Echo"
    /** Delay before each streamed chunk (stream requests only). */
    readonly chunkDelayMs?: number
  }
  | {
    readonly _tag: "Json"
    readonly status?: number
    readonly body: unknown
    /** The body verbatim (its exact text), instead of `body` JSON-encoded. */
    readonly text?: string
    readonly headers?: Headers
    /** Respond after this delay. */
    readonly delayMs?: number
  }
  /** OpenAI-style error: `{"error": {"message", "type", "param": null, "code"}}`. Carries `retry-after-ms: 10` unless overridden. */
  | {
    readonly _tag: "Error"
    readonly status: number
    readonly message: string
    readonly type?: string
    readonly code?: string | null
    readonly param?: string | null
    readonly headers?: Headers
    readonly delayMs?: number
  }
  | {
    readonly _tag: "Stream"
    readonly chunks: ReadonlyArray<StreamChunk>
    /** Delay before each chunk. */
    readonly delayMs?: number
    /** Destroy the socket after this many chunks (stream cut mid-way). */
    readonly cutAfter?: number
    /** Send this many chunks, then nothing more, keeping the connection open until the client leaves. */
    readonly stallAfter?: number
    /** Send `data: [DONE]` at the end (default true). */
    readonly done?: boolean
    readonly status?: number
    readonly headers?: Headers
  }
  /** Never respond (until the client aborts or the fake closes). */
  | { readonly _tag: "Hang" }
  /** Wait, then behave as `then` (default: Echo). */
  | { readonly _tag: "Slow"; readonly delayMs: number; readonly then?: Behaviour }
  /** Destroy the connection without any response (SDK sees a connection error). */
  | { readonly _tag: "Disconnect"; readonly delayMs?: number }
  /** Decide per request. */
  | { readonly _tag: "Respond"; readonly handler: (request: RecordedRequest) => Behaviour | Promise<Behaviour> }

type Of<Tag extends Behaviour["_tag"]> = Extract<Behaviour, { readonly _tag: Tag }>

const hangBehaviour: Behaviour = { _tag: "Hang" }

/** Concise constructors for {@link Behaviour}s. */
export const Behaviour = {
  echo: (options: Omit<Of<"Echo">, "_tag"> = {}): Behaviour => ({ _tag: "Echo", ...options }),
  json: (body: unknown, options: Omit<Of<"Json">, "_tag" | "body"> = {}): Behaviour => ({
    _tag: "Json",
    body,
    ...options
  }),
  error: (status: number, message: string, options: Omit<Of<"Error">, "_tag" | "status" | "message"> = {}): Behaviour => ({
    _tag: "Error",
    status,
    message,
    ...options
  }),
  /** An error the SDK will not retry (`x-should-retry: false`). */
  fatal: (status: number, message: string, options: Omit<Of<"Error">, "_tag" | "status" | "message"> = {}): Behaviour => ({
    _tag: "Error",
    status,
    message,
    ...options,
    headers: { "x-should-retry": "false", ...options.headers }
  }),
  stream: (chunks: ReadonlyArray<StreamChunk>, options: Omit<Of<"Stream">, "_tag" | "chunks"> = {}): Behaviour => ({
    _tag: "Stream",
    chunks,
    ...options
  }),
  hang: hangBehaviour,
  slow: (delayMs: number, then?: Behaviour): Behaviour =>
    then === undefined ? { _tag: "Slow", delayMs } : { _tag: "Slow", delayMs, then },
  disconnect: (delayMs = 0): Behaviour => ({ _tag: "Disconnect", delayMs }),
  respond: (handler: (request: RecordedRequest) => Behaviour | Promise<Behaviour>): Behaviour => ({ _tag: "Respond", handler })
} as const

// ---------------------------------------------------------------------------
// Builders for scripted responses
// ---------------------------------------------------------------------------

export type ChatCompletion = OpenAI.ChatCompletion
export type ChatCompletionChunk = OpenAI.ChatCompletionChunk
export type CompletionUsage = OpenAI.CompletionUsage
export type FinishReason = OpenAI.ChatCompletion.Choice["finish_reason"]
type ToolCallDelta = OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall

export const DEFAULT_MODEL = "gpt-fake"
export const DEFAULT_EMBEDDING_DIMENSIONS = 8

export interface ToolCallSpec {
  readonly id: string
  readonly name: string
  /** A JSON string, or a value that is JSON-encoded. */
  readonly arguments: string | object
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000)
let idCounter = 0
const nextId = (prefix: string): string => `${prefix}-${++idCounter}`

export const countWords = (text: string): number => text.split(/\s+/).filter((w) => w.length > 0).length

/** Split text into word pieces whose concatenation is the text (spaces kept, attached before each word). */
export const splitWords = (text: string): Array<string> => {
  const pieces: Array<string> = [...(text.match(/\s*\S+/g) ?? [])]
  const consumed = pieces.join("").length
  if (consumed < text.length) {
    const rest = text.slice(consumed)
    if (pieces.length === 0) pieces.push(rest)
    else pieces[pieces.length - 1] += rest
  }
  return pieces
}

export const usageOf = (promptTokens: number, completionTokens: number): CompletionUsage => ({
  prompt_tokens: promptTokens,
  completion_tokens: completionTokens,
  total_tokens: promptTokens + completionTokens
})

const argumentsString = (args: string | object): string => (typeof args === "string" ? args : JSON.stringify(args))

/** A non-streaming `chat.completion`. Defaults: content "ok" (null with tool calls), finish "stop"/"tool_calls". */
export const completion = (options: {
  readonly content?: string | null
  readonly toolCalls?: ReadonlyArray<ToolCallSpec>
  readonly finishReason?: FinishReason
  readonly model?: string
  /** `null` omits usage; default counts words of the content. */
  readonly usage?: CompletionUsage | null
  readonly id?: string
  readonly refusal?: string | null
} = {}): ChatCompletion => {
  const toolCalls = options.toolCalls ?? []
  const content = options.content !== undefined ? options.content : toolCalls.length > 0 ? null : "ok"
  const message: OpenAI.ChatCompletionMessage = {
    role: "assistant",
    content,
    refusal: options.refusal ?? null,
    ...(toolCalls.length > 0
      ? {
        tool_calls: toolCalls.map((call) => ({
          id: call.id,
          type: "function" as const,
          function: { name: call.name, arguments: argumentsString(call.arguments) }
        }))
      }
      : {})
  }
  const usage = options.usage === undefined ? usageOf(1, countWords(content ?? "")) : options.usage
  return {
    id: options.id ?? nextId("chatcmpl-fake"),
    object: "chat.completion",
    created: nowSeconds(),
    model: options.model ?? DEFAULT_MODEL,
    choices: [{
      index: 0,
      message,
      finish_reason: options.finishReason ?? (toolCalls.length > 0 ? "tool_calls" : "stop"),
      logprobs: null
    }],
    ...(usage === null ? {} : { usage })
  }
}

export interface ChunkOptions {
  readonly content?: string | null
  readonly role?: "assistant"
  readonly toolCallDeltas?: ReadonlyArray<ToolCallDelta>
  readonly refusal?: string | null
  readonly finishReason?: FinishReason | null
  readonly usage?: CompletionUsage | null
  /** Pass `[]` for a usage-only chunk. */
  readonly choices?: ReadonlyArray<never>
  readonly id?: string
  readonly model?: string
  readonly created?: number
}

/** One `chat.completion.chunk` with a single choice (or none with `choices: []`). */
export const chunk = (options: ChunkOptions = {}): ChatCompletionChunk => {
  const delta: OpenAI.ChatCompletionChunk.Choice.Delta = {
    ...(options.role !== undefined ? { role: options.role } : {}),
    ...(options.content !== undefined ? { content: options.content } : {}),
    ...(options.refusal !== undefined ? { refusal: options.refusal } : {}),
    ...(options.toolCallDeltas !== undefined ? { tool_calls: options.toolCallDeltas.map((d) => ({ ...d })) } : {})
  }
  return {
    id: options.id ?? "chatcmpl-fake-stream",
    object: "chat.completion.chunk",
    created: options.created ?? nowSeconds(),
    model: options.model ?? DEFAULT_MODEL,
    choices: options.choices !== undefined
      ? []
      : [{ index: 0, delta, finish_reason: options.finishReason ?? null, logprobs: null }],
    ...(options.usage !== undefined ? { usage: options.usage } : {})
  }
}

export interface StreamOptions {
  readonly id?: string
  readonly model?: string
  readonly finishReason?: FinishReason
  /** Append a `choices: []` chunk with usage (what `stream_options.include_usage` asks for). */
  readonly includeUsage?: boolean
  /** Usage for that chunk (default: 1 prompt token, word count of the output). */
  readonly usage?: CompletionUsage
}

const streamIdentity = (options: StreamOptions) => ({
  id: options.id ?? nextId("chatcmpl-fake"),
  model: options.model ?? DEFAULT_MODEL,
  created: nowSeconds()
})

/** Role chunk, one chunk per word (concatenation = text), finish chunk, optional usage chunk. */
export const textChunks = (text: string, options: StreamOptions = {}): Array<ChatCompletionChunk> => {
  const ident = streamIdentity(options)
  const chunks = [
    chunk({ ...ident, role: "assistant", content: "" }),
    ...splitWords(text).map((piece) => chunk({ ...ident, content: piece })),
    chunk({ ...ident, finishReason: options.finishReason ?? "stop" })
  ]
  if (options.includeUsage === true) {
    chunks.push(chunk({ ...ident, choices: [], usage: options.usage ?? usageOf(1, countWords(text)) }))
  }
  return chunks
}

const splitInto = (text: string, parts: number): Array<string> => {
  if (text.length === 0) return []
  const n = Math.max(1, Math.min(Math.floor(parts), text.length))
  const size = Math.ceil(text.length / n)
  const out: Array<string> = []
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size))
  return out
}

/**
 * OpenAI-style streamed tool calls: a role chunk, then per call a header delta
 * (index, id, type, function.name, arguments "") followed by argument pieces
 * (index + function.arguments only). Calls are interleaved by index
 * (header0, header1, piece0_0, piece1_0, …) unless `interleave: false`.
 * Ends with an empty-delta chunk, finish_reason "tool_calls" (+ usage chunk).
 */
export const toolCallChunks = (
  calls: ReadonlyArray<ToolCallSpec>,
  options: StreamOptions & { readonly splitInto?: number; readonly interleave?: boolean; readonly content?: string } = {}
): Array<ChatCompletionChunk> => {
  const ident = streamIdentity(options)
  const perCall: Array<Array<ToolCallDelta>> = calls.map((call, index) => [
    { index, id: call.id, type: "function", function: { name: call.name, arguments: "" } },
    ...splitInto(argumentsString(call.arguments), options.splitInto ?? 3).map((piece): ToolCallDelta => ({
      index,
      function: { arguments: piece }
    }))
  ])
  const deltas: Array<ToolCallDelta> = []
  if (options.interleave === false) {
    for (const list of perCall) deltas.push(...list)
  } else {
    const rounds = Math.max(0, ...perCall.map((list) => list.length))
    for (let r = 0; r < rounds; r++) {
      for (const list of perCall) {
        const delta = list[r]
        if (delta !== undefined) deltas.push(delta)
      }
    }
  }
  const chunks = [
    chunk({ ...ident, role: "assistant", content: null }),
    ...(options.content !== undefined ? splitWords(options.content).map((piece) => chunk({ ...ident, content: piece })) : []),
    ...deltas.map((delta) => chunk({ ...ident, toolCallDeltas: [delta] })),
    chunk({ ...ident, finishReason: options.finishReason ?? "tool_calls" })
  ]
  if (options.includeUsage === true) {
    const completionTokens = calls.reduce((n, c) => n + countWords(argumentsString(c.arguments)), 0)
    chunks.push(chunk({ ...ident, choices: [], usage: options.usage ?? usageOf(1, completionTokens) }))
  }
  return chunks
}

/** Body of an OpenAI error response. */
export const errorBody = (message: string, type: string, code: string | null = null, param: string | null = null) => ({
  error: { message, type, param, code }
})

const defaultErrorType = (status: number): string => {
  if (status === 401) return "authentication_error"
  if (status === 403) return "permission_error"
  if (status === 404) return "not_found_error"
  if (status === 429) return "rate_limit_error"
  if (status >= 500) return "server_error"
  return "invalid_request_error"
}

// ---------------------------------------------------------------------------
// The echo model
// ---------------------------------------------------------------------------

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

const contentText = (content: unknown): string => {
  if (typeof content === "string") return content
  if (Array.isArray(content)) {
    return content
      .map((part: unknown) => (isRecord(part) && typeof part["text"] === "string" ? part["text"] : ""))
      .join("")
  }
  return ""
}

const messagesOf = (fields: Readonly<Record<string, unknown>>): Array<Record<string, unknown>> => {
  const messages = fields["messages"]
  return Array.isArray(messages) ? messages.filter(isRecord) : []
}

/** The text the echo model answers for a chat request body: `echo: <last user message>`. */
export const echoText = (fields: Readonly<Record<string, unknown>>): string => {
  const lastUser = messagesOf(fields).filter((m) => m["role"] === "user").at(-1)
  return `echo: ${lastUser === undefined ? "" : contentText(lastUser["content"])}`
}

const promptTokens = (fields: Readonly<Record<string, unknown>>): number =>
  messagesOf(fields).reduce((n, m) => n + countWords(contentText(m["content"])), 0)

const modelOf = (fields: Readonly<Record<string, unknown>>, fallback: string): string =>
  typeof fields["model"] === "string" ? fields["model"] : fallback

const echoCompletion = (fields: Readonly<Record<string, unknown>>): ChatCompletion => {
  const text = echoText(fields)
  return completion({
    content: text,
    model: modelOf(fields, DEFAULT_MODEL),
    usage: usageOf(promptTokens(fields), countWords(text))
  })
}

const echoChunks = (fields: Readonly<Record<string, unknown>>): Array<ChatCompletionChunk> => {
  const text = echoText(fields)
  const streamOptions = fields["stream_options"]
  return textChunks(text, {
    model: modelOf(fields, DEFAULT_MODEL),
    includeUsage: isRecord(streamOptions) && streamOptions["include_usage"] === true,
    usage: usageOf(promptTokens(fields), countWords(text))
  })
}

/** Deterministic unit vector for `text` (values are float32-exact, so float and base64 encodings agree). */
export const embeddingFor = (text: string, dimensions: number = DEFAULT_EMBEDDING_DIMENSIONS): Array<number> => {
  // FNV-1a seed, mulberry32 PRNG.
  let seed = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    seed ^= text.charCodeAt(i)
    seed = Math.imul(seed, 0x01000193)
  }
  const raw: Array<number> = []
  for (let i = 0; i < dimensions; i++) {
    seed = (seed + 0x6d2b79f5) | 0
    let t = seed
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    raw.push(((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1)
  }
  const norm = Math.sqrt(raw.reduce((s, x) => s + x * x, 0)) || 1
  return raw.map((x) => Math.fround(x / norm))
}

export const toBase64Float32 = (vector: ReadonlyArray<number>): string =>
  Buffer.from(new Float32Array(vector).buffer).toString("base64")

const embeddingInputs = (input: unknown): Array<string> => {
  if (typeof input === "string") return [input]
  if (Array.isArray(input)) {
    if (input.every((x: unknown) => typeof x === "number")) return [input.join(" ")]
    return input.map((x: unknown) => (typeof x === "string" ? x : Array.isArray(x) ? x.join(" ") : String(x)))
  }
  return []
}

const echoEmbeddings = (fields: Readonly<Record<string, unknown>>): Behaviour => {
  const inputs = embeddingInputs(fields["input"])
  if (inputs.length === 0) {
    return Behaviour.fatal(400, "'input' is a required property", { param: "input" })
  }
  const dims = typeof fields["dimensions"] === "number" ? fields["dimensions"] : DEFAULT_EMBEDDING_DIMENSIONS
  const base64 = fields["encoding_format"] === "base64"
  const tokens = inputs.reduce((n, s) => n + countWords(s), 0)
  return Behaviour.json({
    object: "list",
    data: inputs.map((text, index) => {
      const vector = embeddingFor(text, dims)
      return { object: "embedding", index, embedding: base64 ? toBase64Float32(vector) : vector }
    }),
    model: modelOf(fields, "text-embedding-fake"),
    usage: { prompt_tokens: tokens, total_tokens: tokens }
  })
}

export const FAKE_MODELS: ReadonlyArray<string> = [DEFAULT_MODEL, "gpt-4o-mini", "text-embedding-3-small", "text-embedding-fake"]

const modelObject = (id: string) => ({ id, object: "model", created: 1700000000, owned_by: "fake-openai" })

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

type Route = "chat" | "embeddings" | "models" | "model"

const routeOf = (method: string, path: string): Route | undefined => {
  const p = path.replace(/\/+$/, "")
  if (method === "POST" && p === "/v1/chat/completions") return "chat"
  if (method === "POST" && p === "/v1/embeddings") return "embeddings"
  if (method === "GET" && p === "/v1/models") return "models"
  if (method === "GET" && p.startsWith("/v1/models/")) return "model"
  return undefined
}

const echoFor = (route: Route, record: RecordedRequest, chunkDelayMs: number | undefined): Behaviour => {
  const fields = record.fields
  switch (route) {
    case "chat":
      return fields["stream"] === true
        ? Behaviour.stream(echoChunks(fields), chunkDelayMs === undefined ? {} : { delayMs: chunkDelayMs })
        : Behaviour.json(echoCompletion(fields))
    case "embeddings":
      return echoEmbeddings(fields)
    case "models":
      return Behaviour.json({ object: "list", data: FAKE_MODELS.map(modelObject) })
    case "model": {
      const id = decodeURIComponent(record.path.replace(/\/+$/, "").slice("/v1/models/".length))
      return FAKE_MODELS.includes(id)
        ? Behaviour.json(modelObject(id))
        : Behaviour.fatal(404, `The model '${id}' does not exist`, { code: "model_not_found" })
    }
  }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

export interface FakeOpenAI {
  /** `http://127.0.0.1:PORT/v1` — pass as the SDK's `baseURL`. */
  readonly baseUrl: string
  /** `http://127.0.0.1:PORT` */
  readonly origin: string
  readonly port: number

  /** Snapshot of all recorded requests (the records' status fields stay live). */
  readonly requests: ReadonlyArray<RecordedRequest>
  readonly lastRequest: RecordedRequest | undefined
  readonly requestCount: number
  readonly abortedCount: number
  /** Requests whose response is neither finished nor aborted/cut. */
  readonly inFlightCount: number
  /** Queued behaviours not yet taken. */
  readonly pendingBehaviours: number

  /** Each request to a known route takes the next queued behaviour. */
  readonly enqueue: (...behaviours: ReadonlyArray<Behaviour>) => void
  /** Behaviour when the queue is empty (initially `Echo`). */
  readonly setDefault: (behaviour: Behaviour) => void
  /** Clear the queue and the recorded requests; default back to `Echo`. */
  readonly reset: () => void

  /** Effect: until at least `n` requests were recorded; returns the snapshot. Default timeout 10 s. */
  readonly awaitRequests: (n: number, timeout?: Duration.DurationInput) => Effect.Effect<ReadonlyArray<RecordedRequest>, Cause.TimeoutException>
  /** Effect: until at least `n` (default 1) requests were aborted by the client; returns the aborted ones. */
  readonly awaitAborted: (n?: number, timeout?: Duration.DurationInput) => Effect.Effect<ReadonlyArray<RecordedRequest>, Cause.TimeoutException>
  /** Effect: until some recorded request satisfies `predicate` (re-checked on every state change). */
  readonly awaitRequest: (predicate: (request: RecordedRequest) => boolean, timeout?: Duration.DurationInput) => Effect.Effect<RecordedRequest, Cause.TimeoutException>

  /** Promise twins of the `await*` Effects (reject with `Cause.TimeoutException`). */
  readonly waitForRequests: (n: number, timeout?: Duration.DurationInput) => Promise<ReadonlyArray<RecordedRequest>>
  readonly waitForAborted: (n?: number, timeout?: Duration.DurationInput) => Promise<ReadonlyArray<RecordedRequest>>
  readonly waitForRequest: (predicate: (request: RecordedRequest) => boolean, timeout?: Duration.DurationInput) => Promise<RecordedRequest>

  /** Stop listening and destroy all open sockets. Idempotent. */
  readonly close: () => Promise<void>
}

const DEFAULT_WAIT: Duration.DurationInput = Duration.seconds(10)
const DEFAULT_ERROR_HEADERS: Headers = { "retry-after-ms": "10" }

interface Exchange {
  readonly req: IncomingMessage
  readonly res: ServerResponse
  readonly record: Mutable<RecordedRequest>
  closed: boolean
  readonly onClose: Set<() => void>
}

const flatHeaders = (req: IncomingMessage): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) out[name.toLowerCase()] = Array.isArray(value) ? value.join(", ") : value
  }
  return out
}

/** Start a fake on 127.0.0.1 with a random port. Call `close()` when done. */
export const start = (): Promise<FakeOpenAI> => {
  const records: Array<Mutable<RecordedRequest>> = []
  const sockets = new Set<Socket>()
  const listeners = new Set<() => void>()
  let queue: Array<Behaviour> = []
  let defaultBehaviour: Behaviour = Behaviour.echo()
  let closing = false
  let closePromise: Promise<void> | undefined

  const notify = () => {
    for (const listener of [...listeners]) listener()
  }

  // --- waiting -------------------------------------------------------------

  /** Resolve when `check` returns a value; re-checked on every state change. */
  const waitUntil = <A>(
    check: () => A | undefined,
    timeout: Duration.DurationInput,
    describe: string,
    onSettle: (result: { readonly _tag: "Ok"; readonly value: A } | { readonly _tag: "Timeout"; readonly error: Cause.TimeoutException }) => void
  ): (() => void) => {
    let done = false
    const cleanup = () => {
      done = true
      listeners.delete(listener)
      clearTimeout(timer)
    }
    const listener = () => {
      if (done) return
      const value = check()
      if (value !== undefined) {
        cleanup()
        onSettle({ _tag: "Ok", value })
      }
    }
    const timer = setTimeout(() => {
      if (done) return
      cleanup()
      onSettle({
        _tag: "Timeout",
        error: new Cause.TimeoutException(
          `FakeOpenAI: timed out after ${Duration.format(timeout)} waiting for ${describe} (${records.length} requests, ${records.filter((r) => r.aborted).length} aborted)`
        )
      })
    }, Duration.toMillis(timeout))
    listeners.add(listener)
    listener()
    return cleanup
  }

  const asEffect = <A>(check: () => A | undefined, timeout: Duration.DurationInput, describe: string) =>
    Effect.async<A, Cause.TimeoutException>((resume) => {
      const cancel = waitUntil(check, timeout, describe, (result) =>
        resume(result._tag === "Ok" ? Effect.succeed(result.value) : Effect.fail(result.error)))
      return Effect.sync(cancel)
    })

  const asPromise = <A>(check: () => A | undefined, timeout: Duration.DurationInput, describe: string) =>
    new Promise<A>((resolve, reject) => {
      waitUntil(check, timeout, describe, (result) => (result._tag === "Ok" ? resolve(result.value) : reject(result.error)))
    })

  const requestsCheck = (n: number) => () => (records.length >= n ? [...records] : undefined)
  const abortedCheck = (n: number) => () => {
    const aborted = records.filter((r) => r.aborted)
    return aborted.length >= n ? aborted : undefined
  }
  const predicateCheck = (predicate: (request: RecordedRequest) => boolean) => () => records.find(predicate)

  // --- exchange helpers ----------------------------------------------------

  const sleep = (ex: Exchange, ms: number): Promise<boolean> =>
    new Promise((resolve) => {
      if (ex.closed) return resolve(false)
      if (ms <= 0) return resolve(true)
      const wake = () => {
        clearTimeout(timer)
        ex.onClose.delete(wake)
        resolve(!ex.closed)
      }
      const timer = setTimeout(wake, ms)
      ex.onClose.add(wake)
    })

  const write = (ex: Exchange, data: string): Promise<boolean> =>
    new Promise((resolve) => {
      if (ex.closed || ex.res.destroyed) return resolve(false)
      ex.res.write(data, (err) => resolve(err == null && !ex.closed))
    })

  const writeHead = (ex: Exchange, status: number, headers: Headers) => {
    ex.record.status = status
    ex.res.writeHead(status, headers)
  }

  const sendJson = (ex: Exchange, status: number, body: unknown, headers: Headers = {}, text?: string) => {
    if (ex.closed || ex.res.headersSent) return
    const payload = text ?? JSON.stringify(body)
    writeHead(ex, status, {
      "content-type": "application/json",
      "content-length": String(Buffer.byteLength(payload)),
      "x-request-id": `req_fake_${ex.record.index}`,
      ...headers
    })
    ex.res.end(payload)
  }

  const sendError = (ex: Exchange, status: number, message: string, type?: string, code: string | null = null, param: string | null = null, headers: Headers = {}) =>
    sendJson(ex, status, errorBody(message, type ?? defaultErrorType(status), code, param), { ...DEFAULT_ERROR_HEADERS, ...headers })

  const cut = (ex: Exchange) => {
    if (ex.closed) return
    ex.record.cut = true
    ex.res.socket?.destroy()
    ex.res.destroy()
  }

  const run = async (ex: Exchange, behaviour: Behaviour, route: Route): Promise<void> => {
    if (ex.closed) return
    switch (behaviour._tag) {
      case "Echo":
        return run(ex, echoFor(route, ex.record, behaviour.chunkDelayMs), route)
      case "Json":
        if (behaviour.delayMs !== undefined && !(await sleep(ex, behaviour.delayMs))) return
        return sendJson(ex, behaviour.status ?? 200, behaviour.body, behaviour.headers, behaviour.text)
      case "Error":
        if (behaviour.delayMs !== undefined && !(await sleep(ex, behaviour.delayMs))) return
        return sendError(ex, behaviour.status, behaviour.message, behaviour.type, behaviour.code ?? null, behaviour.param ?? null, behaviour.headers)
      case "Slow":
        if (!(await sleep(ex, behaviour.delayMs))) return
        return run(ex, behaviour.then ?? Behaviour.echo(), route)
      case "Hang":
        return
      case "Disconnect":
        if (behaviour.delayMs !== undefined && !(await sleep(ex, behaviour.delayMs))) return
        return cut(ex)
      case "Respond":
        return run(ex, await behaviour.handler(ex.record), route)
      case "Stream": {
        writeHead(ex, behaviour.status ?? 200, {
          "content-type": "text/event-stream; charset=utf-8",
          "cache-control": "no-cache",
          "x-request-id": `req_fake_${ex.record.index}`,
          ...behaviour.headers
        })
        ex.res.flushHeaders()
        let sent = 0
        for (const item of behaviour.chunks) {
          if (behaviour.cutAfter !== undefined && sent >= behaviour.cutAfter) return cut(ex)
          if (behaviour.stallAfter !== undefined && sent >= behaviour.stallAfter) return
          if (behaviour.delayMs !== undefined && !(await sleep(ex, behaviour.delayMs))) return
          const data = typeof item === "string" ? item : JSON.stringify(item)
          if (!(await write(ex, `data: ${data}\n\n`))) return
          sent++
        }
        if (behaviour.cutAfter !== undefined && sent >= behaviour.cutAfter) return cut(ex)
        if (behaviour.stallAfter !== undefined && sent >= behaviour.stallAfter) return
        if (behaviour.done !== false && !(await write(ex, "data: [DONE]\n\n"))) return
        if (!ex.closed) ex.res.end()
        return
      }
    }
  }

  // --- request handling ----------------------------------------------------

  const handle = (req: IncomingMessage, res: ServerResponse, rawBody: string) => {
    const url = req.url ?? "/"
    const path = url.split("?")[0] ?? "/"
    const method = (req.method ?? "GET").toUpperCase()
    let body: unknown = undefined
    let invalidJson = false
    if (rawBody.length > 0) {
      try {
        body = JSON.parse(rawBody)
      } catch {
        invalidJson = true
      }
    }
    const record: Mutable<RecordedRequest> = {
      index: records.length,
      method,
      path,
      url,
      headers: flatHeaders(req),
      body,
      fields: isRecord(body) ? body : {},
      rawBody,
      startedAt: Date.now(),
      aborted: false,
      finished: false,
      cut: false,
      status: undefined,
      endedAt: undefined
    }
    const ex: Exchange = { req, res, record, closed: false, onClose: new Set() }
    records.push(record)

    res.on("finish", () => {
      record.finished = true
      record.endedAt ??= Date.now()
      notify()
    })
    res.on("close", () => {
      ex.closed = true
      if (!res.writableEnded && !record.cut && !closing) record.aborted = true
      record.endedAt ??= Date.now()
      for (const wake of [...ex.onClose]) wake()
      notify()
    })
    notify()

    const route = routeOf(method, path)
    if (route === undefined) {
      return sendError(ex, 404, `Unknown request URL: ${method} ${path}. Please check the URL for typos.`, "invalid_request_error", "unknown_url", null, { "x-should-retry": "false" })
    }
    if (invalidJson) {
      return sendError(ex, 400, "We could not parse the JSON body of your request.", "invalid_request_error", null, null, { "x-should-retry": "false" })
    }
    const behaviour = queue.shift() ?? defaultBehaviour
    run(ex, behaviour, route).catch((cause: unknown) => {
      const message = cause instanceof Error ? cause.message : String(cause)
      if (!res.headersSent) sendError(ex, 500, `FakeOpenAI behaviour failed: ${message}`, "server_error", null, null, { "x-should-retry": "false" })
      else cut(ex)
    })
  }

  const server = createServer({ noDelay: true, keepAlive: true }, (req, res) => {
    const parts: Array<Buffer> = []
    req.on("data", (part: Buffer) => parts.push(part))
    req.on("end", () => handle(req, res, Buffer.concat(parts).toString("utf8")))
    req.on("error", () => res.destroy())
  })
  server.on("connection", (socket: Socket) => {
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
  })

  const close = (): Promise<void> => {
    if (closePromise !== undefined) return closePromise
    closing = true
    closePromise = new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
      for (const socket of sockets) socket.destroy()
      sockets.clear()
    }).finally(() => {
      notify()
      listeners.clear()
    })
    return closePromise
  }

  return new Promise<FakeOpenAI>((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject)
      const address = server.address()
      if (address === null || typeof address === "string") {
        server.close()
        return reject(new Error("FakeOpenAI: unexpected server address"))
      }
      const origin = `http://127.0.0.1:${address.port}`
      const fake: FakeOpenAI = {
        baseUrl: `${origin}/v1`,
        origin,
        port: address.port,
        get requests() {
          return [...records]
        },
        get lastRequest() {
          return records.at(-1)
        },
        get requestCount() {
          return records.length
        },
        get abortedCount() {
          return records.filter((r) => r.aborted).length
        },
        get inFlightCount() {
          return records.filter((r) => !r.finished && !r.aborted && !r.cut && r.endedAt === undefined).length
        },
        get pendingBehaviours() {
          return queue.length
        },
        enqueue: (...behaviours) => {
          queue.push(...behaviours)
        },
        setDefault: (behaviour) => {
          defaultBehaviour = behaviour
        },
        reset: () => {
          queue = []
          records.length = 0
          defaultBehaviour = Behaviour.echo()
        },
        awaitRequests: (n, timeout = DEFAULT_WAIT) => asEffect(requestsCheck(n), timeout, `${n} request(s)`),
        awaitAborted: (n = 1, timeout = DEFAULT_WAIT) => asEffect(abortedCheck(n), timeout, `${n} aborted request(s)`),
        awaitRequest: (predicate, timeout = DEFAULT_WAIT) => asEffect(predicateCheck(predicate), timeout, "a matching request"),
        waitForRequests: (n, timeout = DEFAULT_WAIT) => asPromise(requestsCheck(n), timeout, `${n} request(s)`),
        waitForAborted: (n = 1, timeout = DEFAULT_WAIT) => asPromise(abortedCheck(n), timeout, `${n} aborted request(s)`),
        waitForRequest: (predicate, timeout = DEFAULT_WAIT) => asPromise(predicateCheck(predicate), timeout, "a matching request"),
        close
      }
      resolve(fake)
    })
  })
}

// ---------------------------------------------------------------------------
// Effect API
// ---------------------------------------------------------------------------

/** A fake listening for the lifetime of the scope; released by closing the server and destroying its sockets. */
export const make: Effect.Effect<FakeOpenAI, never, Scope.Scope> = Effect.acquireRelease(
  Effect.promise(() => start()),
  (fake) => Effect.promise(() => fake.close())
)

export class FakeOpenAIService extends Context.Tag("test/FakeOpenAI")<FakeOpenAIService, FakeOpenAI>() {
  /** One fake per layer build (use with `layer(FakeOpenAIService.Default)(...)` or `Effect.provide`). */
  static readonly Default: Layer.Layer<FakeOpenAIService> = Layer.scoped(FakeOpenAIService, make)
}
