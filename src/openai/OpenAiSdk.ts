/**
 * The `OpenAi` service backed by the official openai SDK, so any
 * OpenAI-compatible server works (OpenAI, Ollama, vLLM, LM Studio, gateways).
 *
 * The SDK does transport, SSE parsing and retries (with its own backoff,
 * honouring retry-after); this module adds cancellation that aborts the HTTP
 * request at once, Schema decoding of what comes back, an idle timeout on
 * streams, and the mapping of SDK errors onto the protocol's categories.
 */
import { Duration, Effect, Layer, Option, Redacted, Schema, Stream } from "effect"
import OpenAI, { type APIError } from "openai"
import { AppConfig } from "../config/AppConfig.js"
import { ChatCompletion, ChatCompletionChunk, type UpstreamChatRequest } from "../protocol/Chat.js"
import { EmbeddingResponse, type UpstreamEmbeddingRequest } from "../protocol/Embedding.js"
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
import { describeParseError } from "../protocol/Validation.js"
import { OpenAi } from "./OpenAi.js"

export interface Options {
  readonly apiKey: Redacted.Redacted<string>
  readonly baseUrl: string
  readonly timeout: Duration.Duration
  readonly maxRetries: number
}

export const make = Effect.fn("OpenAiSdk.make")(function*(options: Options) {
  const client = new OpenAI({
    apiKey: Redacted.value(options.apiKey),
    baseURL: options.baseUrl,
    timeout: Duration.toMillis(options.timeout),
    maxRetries: options.maxRetries
  })
  const errors = makeErrorMapper(options)

  const decode = <A, I>(schema: Schema.Schema<A, I>) => {
    const decodeUnknown = Schema.decodeUnknown(schema)
    return (raw: unknown) =>
      decodeUnknown(raw).pipe(Effect.mapError((error) =>
        new UpstreamError({
          code: "invalid_upstream_response",
          message: `The model provider answered with an unexpected shape: ${describeParseError(error)}`
        })
      ))
  }
  const decodeCompletion = decode(ChatCompletion)
  const decodeChunk = decode(ChatCompletionChunk)
  const decodeEmbeddings = decode(EmbeddingResponse)

  const idleTimeout = () =>
    new TimeoutError({
      code: "upstream_timeout",
      message: `The model provider sent nothing for ${Duration.format(options.timeout)}`
    })

  return OpenAi.of({
    provider: "openai",
    baseUrl: options.baseUrl,

    createChatCompletion: (request) =>
      Effect.tryPromise({
        try: (signal) => client.chat.completions.create({ ...request, stream: false }, { signal }),
        catch: errors.fromSdk
      }).pipe(Effect.flatMap(decodeCompletion)),

    streamChatCompletion: (request: UpstreamChatRequest) =>
      Effect.tryPromise({
        try: (signal) =>
          client.chat.completions.create(
            { ...request, stream: true, stream_options: { include_usage: true } },
            { signal }
          ),
        catch: errors.fromSdk
      }).pipe(
        Effect.map((sdkStream) =>
          fromSdkStream(sdkStream, errors.fromStream).pipe(
            Stream.timeoutFail(idleTimeout, options.timeout),
            Stream.mapEffect(decodeChunk),
            failIfUnfinished
          )
        ),
        Stream.unwrap
      ),

    createEmbedding: (request: UpstreamEmbeddingRequest) =>
      Effect.tryPromise({
        // The SDK defaults to base64 and decodes it itself; ask for floats so
        // compatible servers that ignore encoding_format still work.
        try: (signal) => client.embeddings.create({ ...request, encoding_format: "float" }, { signal }),
        catch: errors.fromSdk
      }).pipe(Effect.flatMap(decodeEmbeddings))
  })
})

/** Provides `OpenAi` from AppConfig's OPENAI_* settings (the key must be set). */
export const layer: Layer.Layer<OpenAi, never, AppConfig> = Layer.effect(
  OpenAi,
  Effect.gen(function*() {
    const config = yield* AppConfig
    const apiKey = yield* Option.match(config.openai.apiKey, {
      onNone: () => Effect.dieMessage("OpenAiSdk.layer needs OPENAI_API_KEY"),
      onSome: Effect.succeed
    })
    return yield* make({
      apiKey,
      baseUrl: config.openai.baseUrl,
      timeout: config.openai.timeout,
      maxRetries: config.openai.maxRetries
    })
  })
)

/**
 * An SDK stream as an Effect Stream. Releasing it aborts the HTTP request
 * before ending the iterator: the SDK's iterator is an async generator whose
 * `return()` would otherwise wait for the next chunk, which a stalled model
 * may never send.
 */
export const fromSdkStream = <A>(
  sdkStream: AsyncIterable<A> & { readonly controller: AbortController },
  onError: (cause: unknown) => AiBaseError
): Stream.Stream<A, AiBaseError> =>
  Effect.acquireRelease(
    Effect.sync(() => sdkStream[Symbol.asyncIterator]()),
    (iterator) =>
      Effect.sync(() => sdkStream.controller.abort()).pipe(
        Effect.zipRight(Effect.promise(async () => {
          await iterator.return?.()
        }).pipe(Effect.ignore))
      )
  ).pipe(
    Effect.map((iterator) =>
      Stream.repeatEffectOption(
        Effect.tryPromise({ try: () => iterator.next(), catch: (cause) => Option.some(onError(cause)) }).pipe(
          Effect.flatMap((result) => result.done ? Effect.fail(Option.none()) : Effect.succeed(result.value))
        )
      )
    ),
    Stream.unwrapScoped
  )

/** A stream that ends without any finish_reason was cut off upstream. */
const failIfUnfinished = <E>(
  chunks: Stream.Stream<ChatCompletionChunk, E>
): Stream.Stream<ChatCompletionChunk, E | UpstreamError> =>
  Stream.suspend(() => {
    let finished = false
    return chunks.pipe(
      Stream.tap((chunk) =>
        Effect.sync(() => {
          if (chunk.choices.some((choice) => choice.finish_reason !== null)) finished = true
        })
      ),
      Stream.concat(Stream.suspend(() =>
        finished ? Stream.empty : Stream.fail(
          new UpstreamError({
            code: "stream_interrupted",
            message: "The model provider's stream ended before the completion finished"
          })
        )
      ))
    )
  })

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
