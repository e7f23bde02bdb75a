/**
 * The `OpenAi` service backed by the official openai SDK, so any
 * OpenAI-compatible server works (OpenAI, Ollama, vLLM, LM Studio, gateways).
 *
 * The SDK does transport, SSE parsing and retries (with its own backoff,
 * honouring retry-after); this module adds cancellation that aborts the HTTP
 * request at once, Schema decoding of what comes back, an idle timeout on
 * streams, and the mapping of SDK errors onto the protocol's categories.
 */
import { ConfigError, Duration, Effect, Either, Layer, Option, type ParseResult, Redacted, Schema } from "effect"
import type { IncomingMessage } from "node:http"
import { StringDecoder } from "node:string_decoder"
import OpenAI, { type APIError } from "openai"
import { AppConfig, openaiConnection } from "../config/AppConfig.js"
import { ChatCompletion, ChatCompletionChunk, isPlainTextChunk, type UpstreamChatRequest } from "../protocol/Chat.js"
import { EmbeddingResponse, isPlainEmbeddingResponse, type UpstreamEmbeddingRequest } from "../protocol/Embedding.js"
import {
  type AiBaseError,
  AuthenticationError,
  CancelledError,
  InternalError,
  NotFoundError,
  PermissionError,
  RateLimitError,
  TimeoutError,
  UpstreamError,
  ValidationError
} from "../protocol/Errors.js"
import * as RawJson from "../protocol/RawJson.js"
import { describeParseError } from "../protocol/Validation.js"
import * as Push from "../stream/Push.js"
import * as NodeFetch from "./NodeFetch.js"
import * as ServerSentEvents from "./ServerSentEvents.js"
import { OpenAi } from "./OpenAi.js"

export interface Options {
  readonly apiKey: Redacted.Redacted<string>
  readonly baseUrl: string
  readonly timeout: Duration.Duration
  readonly maxRetries: number
}

export const make = Effect.fn("OpenAiSdk.make")(function*(options: Options) {
  const http = yield* Effect.acquireRelease(Effect.sync(NodeFetch.make), (http) => Effect.sync(http.close))
  const client = new OpenAI({
    apiKey: Redacted.value(options.apiKey),
    baseURL: options.baseUrl,
    timeout: Duration.toMillis(options.timeout),
    maxRetries: options.maxRetries,
    fetch: http.fetch
  })
  const errors = makeErrorMapper(options)
  const timeoutMillis = Duration.toMillis(options.timeout)

  const invalid = (error: ParseResult.ParseError) =>
    new UpstreamError({
      code: "invalid_upstream_response",
      message: `The model provider answered with an unexpected shape: ${describeParseError(error)}`
    })
  const decode = <A, I>(schema: Schema.Schema<A, I>) => {
    const decodeUnknown = Schema.decodeUnknownEither(schema)
    return (raw: unknown) => Either.mapLeft(decodeUnknown(raw), invalid)
  }
  const decodeCompletion = decode(ChatCompletion)
  const decodeChunk = decode(ChatCompletionChunk)
  const decodeEmbeddings = decode(EmbeddingResponse)
  const notJsonBody = new UpstreamError({
    code: "invalid_upstream_response",
    message: "The model provider answered with a body that is not JSON"
  })
  /** An embeddings response in its exact wire shape keeps its text (see RawJson); others go through the Schema. */
  const decodeEmbeddingsText = (text: string): Either.Either<EmbeddingResponse, UpstreamError> => {
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      return Either.left(notJsonBody)
    }
    return isPlainEmbeddingResponse(json) ? Either.right(RawJson.remember(json, text)) : decodeEmbeddings(json)
  }

  const idleTimeout = new TimeoutError({
    code: "upstream_timeout",
    message: `The model provider sent nothing for ${Duration.format(options.timeout)}`
  })
  const notJson = new UpstreamError({
    code: "invalid_upstream_response",
    message: "The model provider streamed an event that is not JSON"
  })
  const unreadable = new InternalError({
    code: "internal_error",
    message: "The model provider's response could not be read as a stream"
  })
  const streamFailed = new InternalError({ code: "internal_error", message: "The stream failed unexpectedly" })
  const cutOff = new UpstreamError({
    code: "stream_interrupted",
    message: "The model provider's stream ended before the completion finished"
  })

  /**
   * The hot path. The SDK makes the request (auth, retries, error statuses);
   * the event stream is then read straight from the socket: each network
   * read is decoded in one synchronous pass, and each chunk is decoded by
   * its Schema and handed to the sink in the same pass, with no fiber step
   * or async iterator per chunk. The idle timeout is one timer refreshed per
   * read. Interruption aborts the HTTP request.
   */
  const pushChatCompletion = (request: UpstreamChatRequest): Push.PushStream<ChatCompletionChunk, AiBaseError> =>
  (sink) =>
    Effect.async<void, AiBaseError>((resume) => {
      const controller = new AbortController()
      client.chat.completions.create(
        { ...request, stream: true, stream_options: { include_usage: true } },
        { signal: controller.signal }
      ).asResponse().then(
        (response) => {
          const body = NodeFetch.incomingOf(response)
          if (body === undefined) return resume(Effect.fail(unreadable))
          readEvents(body, response.headers, sink, (error) => resume(error === undefined ? Effect.void : Effect.fail(error)))
        },
        (cause: unknown) => resume(Effect.fail(errors.fromSdk(cause)))
      )
      return Effect.sync(() => controller.abort())
    })

  /** Reads a chat completion's event stream into the sink; `done` is called once. */
  const readEvents = (
    body: IncomingMessage,
    headers: Headers,
    sink: Push.Sink<ChatCompletionChunk>,
    done: (error: AiBaseError | undefined) => void
  ): void => {
    const text = new StringDecoder("utf8")
    let settled = false
    let ended = false
    let finished = false
    let paused = 0
    const settle = (error: AiBaseError | undefined) => {
      if (settled) return
      settled = true
      clearTimeout(idle)
      if (error !== undefined) body.destroy()
      done(error)
    }
    // A slow client is not a silent model: while reading is paused the idle
    // clock does not count (the timer re-arms itself instead of firing).
    const idle: NodeJS.Timeout = setTimeout(() => paused > 0 ? idle.refresh() : settle(idleTimeout), timeoutMillis)
    // Reading stops while the sink or the event loop asks to wait.
    const wait = (promise: Promise<void>) => {
      if (paused++ === 0) body.pause()
      promise.then(() => {
        if (--paused === 0 && !settled) {
          idle.refresh()
          body.resume()
        }
      })
    }
    const events = new ServerSentEvents.Decoder((data) => {
      if (settled || ended) return
      if (data.startsWith("[DONE]")) {
        ended = true
        return
      }
      let json: unknown
      try {
        json = JSON.parse(data)
      } catch {
        return settle(notJson)
      }
      if (typeof json === "object" && json !== null && "error" in json && json.error) {
        return settle(errors.fromStream(new OpenAI.APIError(undefined, json.error, undefined, headers)))
      }
      let chunk: ChatCompletionChunk
      // A plain text chunk is already in its wire form: its text goes on as it came.
      let text: string | undefined = undefined
      if (isPlainTextChunk(json)) {
        chunk = json
        text = data
      } else {
        const decoded = decodeChunk(json)
        if (Either.isLeft(decoded)) return settle(decoded.left)
        chunk = decoded.right
      }
      if (!finished) finished = chunk.choices.some((choice) => choice.finish_reason !== null)
      let full: Promise<void> | undefined
      try {
        full = sink(chunk, text)
      } catch {
        // This runs in a socket's event handler: a throw must not escape it.
        return settle(streamFailed)
      }
      if (full !== undefined) wait(full)
    })
    body.on("data", (bytes: Buffer) => {
      idle.refresh()
      events.feed(text.write(bytes))
      if (paused === 0 && !settled) {
        const busy = Push.yieldIfBusy()
        if (busy !== undefined) wait(busy)
      }
    })
    body.once("end", () => {
      events.feed(text.end() + "\n\n")
      settle(finished ? undefined : cutOff)
    })
    body.once("error", (cause) => settle(errors.fromStream(cause)))
    body.once("close", () => settle(cutOff))
  }

  return OpenAi.of({
    provider: "openai",
    baseUrl: options.baseUrl,

    createChatCompletion: (request) =>
      Effect.tryPromise({
        try: (signal) => client.chat.completions.create({ ...request, stream: false }, { signal }),
        catch: errors.fromSdk
      }).pipe(Effect.flatMap(decodeCompletion)),

    pushChatCompletion,
    streamChatCompletion: (request) => Push.toStream(pushChatCompletion(request)),

    createEmbedding: (request: UpstreamEmbeddingRequest) =>
      Effect.tryPromise({
        // The SDK defaults to base64 and decodes it itself; ask for floats so
        // compatible servers that ignore encoding_format still work. The body
        // is read here, as text, so that it can be sent on as it came.
        try: (signal) =>
          client.embeddings.create({ ...request, encoding_format: "float" }, { signal }).asResponse().then((response) =>
            response.text()
          ),
        catch: errors.fromSdk
      }).pipe(Effect.flatMap(decodeEmbeddingsText))
  })
})

/** The openai SDK as the model provider. */
export const layer = (options: Options): Layer.Layer<OpenAi> => Layer.scoped(OpenAi, make(options))

const missingKey = ConfigError.MissingData(["OPENAI_API_KEY"], "The openai provider needs OPENAI_API_KEY")

/**
 * The provider from OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_TIMEOUT_SECONDS
 * and OPENAI_MAX_RETRIES; without a key, startup fails with a ConfigError.
 */
export const layerConfig: Layer.Layer<OpenAi, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.flatMap(openaiConnection, ({ apiKey, ...options }) =>
    Option.match(apiKey, { onNone: () => Effect.fail(missingKey), onSome: (key) => Effect.succeed(layer({ apiKey: key, ...options })) }))
)

/** The provider from AppConfig (the form the standalone server assembles). */
export const layerFromAppConfig: Layer.Layer<OpenAi, ConfigError.ConfigError, AppConfig> = Layer.unwrapEffect(
  Effect.flatMap(AppConfig, ({ openai: { apiKey, baseUrl, maxRetries, timeout } }) =>
    Option.match(apiKey, {
      onNone: () => Effect.fail(missingKey),
      onSome: (key) => Effect.succeed(layer({ apiKey: key, baseUrl, timeout, maxRetries }))
    }))
)

/** Maps SDK failures onto the protocol's categories, scrubbing secrets from messages. */
const makeErrorMapper = (options: Options) => {
  const secret = Redacted.value(options.apiKey)
  const scrub = (text: string): string =>
    (secret.length > 0 ? text.split(secret).join("[redacted]") : text)
      .replace(/\bsk-[A-Za-z0-9_*-]{4,}/g, "[redacted]")
      .replace(/Bearer\s+\S+/gi, "Bearer [redacted]")

  const upstreamMessage = (error: APIError): string => {
    const body: unknown = error.error
    const fromBody = typeof body === "object" && body !== null && "message" in body && typeof body.message === "string"
      ? body.message
      : undefined
    return scrub(fromBody ?? error.message)
  }

  const fromSdk = (cause: unknown): AiBaseError => {
    if (cause instanceof OpenAI.APIUserAbortError) {
      return new CancelledError({ code: "cancelled", message: "The request was cancelled" })
    }
    if (cause instanceof OpenAI.APIConnectionTimeoutError) {
      return new TimeoutError({
        code: "upstream_timeout",
        message: `The model provider did not answer within ${Duration.format(options.timeout)}`
      })
    }
    if (cause instanceof OpenAI.APIConnectionError) {
      return new UpstreamError({
        code: "upstream_unreachable",
        message: `Could not reach the model provider at ${options.baseUrl}`
      })
    }
    if (cause instanceof OpenAI.APIError) {
      const status = cause.status ?? 0
      const detail = upstreamMessage(cause)
      switch (status) {
        case 400:
          return new ValidationError({ code: "upstream_bad_request", message: `The model provider rejected the request: ${detail}` })
        case 422:
          return new ValidationError({ code: "upstream_unprocessable", message: `The model provider could not process the request: ${detail}` })
        case 401:
          return new AuthenticationError({
            code: "upstream_unauthorized",
            message: "The model provider rejected the server's API key (HTTP 401); check OPENAI_API_KEY on the server"
          })
        case 403:
          return new PermissionError({ code: "upstream_forbidden", message: `The model provider refused the request: ${detail}` })
        case 404:
          return new NotFoundError({
            code: cause.code === "model_not_found" ? "model_not_found" : "upstream_not_found",
            message: `The model provider does not know this model or resource: ${detail}`
          })
        case 429:
          return new RateLimitError({ code: "rate_limited", message: `The model provider is rate limiting requests: ${detail}` })
        case 408:
          return new TimeoutError({ code: "upstream_timeout", message: `The model provider timed out: ${detail}` })
        default:
          return new UpstreamError({
            code: "upstream_error",
            message: `The model provider failed (HTTP ${status || "unknown"}): ${detail}`
          })
      }
    }
    return new InternalError({ code: "internal_error", message: "Calling the model provider failed unexpectedly" })
  }

  /** Mid-stream, anything that is not an SDK error is the connection breaking. */
  const fromStream = (cause: unknown): AiBaseError =>
    cause instanceof OpenAI.APIError ? fromSdk(cause) : new UpstreamError({
      code: "stream_interrupted",
      message: "The model provider's stream broke off before the completion finished"
    })

  return { fromSdk, fromStream } as const
}
