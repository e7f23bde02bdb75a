/**
 * The model provider AIBase talks to. Two implementations ship: `OpenAiSdk`
 * (the openai SDK against any OpenAI-compatible server) and `OfflineModel`
 * (built in, deterministic, no network). Anything else that speaks these
 * shapes can be provided instead.
 *
 * Requests arrive fully resolved (model and defaults filled in, tools in
 * OpenAI's shape); results are decoded into the protocol's Schemas. Failures
 * are already categorised. Interrupting a call aborts its upstream request.
 */
import { Context, type Effect, type Stream } from "effect"
import type { ChatCompletion, ChatCompletionChunk, UpstreamChatRequest } from "../protocol/Chat.js"
import type { EmbeddingResponse, UpstreamEmbeddingRequest } from "../protocol/Embedding.js"
import type { AiBaseError } from "../protocol/Errors.js"
import * as Push from "../stream/Push.js"

export class OpenAi extends Context.Tag("aibase/OpenAi")<OpenAi, {
  /**
   * What /info, the startup log, metrics and traces report
   * (`gen_ai.provider.name`): `openai` and `offline` for the two that ship,
   * any name for another provider.
   */
  readonly provider: string
  /** The upstream base URL, without credentials (absent for the offline model). */
  readonly baseUrl: string | undefined
  readonly createChatCompletion: (request: UpstreamChatRequest) => Effect.Effect<ChatCompletion, AiBaseError>
  /**
   * Streams chunks. The stream asks for usage (`stream_options.include_usage`)
   * so the last chunk may carry it with no choices.
   */
  readonly streamChatCompletion: (request: UpstreamChatRequest) => Stream.Stream<ChatCompletionChunk, AiBaseError>
  /**
   * The same stream pushed into a sink, one synchronous call per chunk: the
   * form the server's hot path uses. Optional; without it the server pushes
   * `streamChatCompletion`'s elements (see `pushChatCompletion`).
   */
  readonly pushChatCompletion?: (
    request: UpstreamChatRequest
  ) => Push.PushStream<ChatCompletionChunk, AiBaseError>
  readonly createEmbedding: (request: UpstreamEmbeddingRequest) => Effect.Effect<EmbeddingResponse, AiBaseError>
}>() {}

/** A provider's chunks as a push stream, through its own push form when it has one. */
export const pushChatCompletion = (
  openai: OpenAi["Type"],
  request: UpstreamChatRequest
): Push.PushStream<ChatCompletionChunk, AiBaseError> =>
  openai.pushChatCompletion?.(request) ?? Push.fromStream(openai.streamChatCompletion(request))
