/**
 * The one implementation of every AIBase request. Both transports serve
 * these handlers: /rpc through RpcServer, /ws through the envelope adapter.
 */
import { Clock, Context, Effect, Either, Layer, type ParseResult, Schema } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { OpenAi } from "../openai/OpenAi.js"
import { ChatCompletionRequest } from "../protocol/Chat.js"
import { Admission } from "../hub/Admission.js"
import type { AiBaseError, OverloadedError } from "../protocol/Errors.js"
import { type AiBaseRpc, AiBaseRpcs } from "../protocol/Rpcs.js"
import * as Push from "../stream/Push.js"
import { ToolRegistry } from "../tools/ToolRegistry.js"
import { Chat } from "./Chat.js"

/** A streamed request's handler in push form, with the decoding of its payload. */
export interface PushHandler {
  readonly run: (payload: unknown) => Either.Either<Push.PushStream<StreamEvent, AiBaseError>, ParseResult.ParseError>
}

/** The element of a stream: its tag names the /ws frame, `data` is the frame's data. */
export interface StreamEvent {
  readonly _tag: string
  readonly data: unknown
}

const pushHandler = <P, I, A extends StreamEvent>(
  payload: Schema.Schema<P, I>,
  run: (payload: P) => Push.PushStream<A, AiBaseError>
): PushHandler => {
  const decode = Schema.decodeUnknownEither(payload, { onExcessProperty: "ignore" })
  return { run: (raw) => Either.map(decode(raw), run) }
}

/**
 * The streamed requests again, in push form, keyed by Rpc tag: what the /ws
 * transport runs (one function call per element instead of a Stream pull).
 * Each is the same implementation as the RpcGroup handler of that tag.
 */
export class PushHandlers extends Context.Tag("aibase/PushHandlers")<
  PushHandlers,
  ReadonlyMap<AiBaseRpc["_tag"], PushHandler>
>() {}

const rpcHandlers = AiBaseRpcs.toLayer(Effect.gen(function*() {
  const config = yield* AppConfig
  const openai = yield* OpenAi
  const registry = yield* ToolRegistry
  const chat = yield* Chat
  const { guard } = yield* Admission

  return AiBaseRpcs.of({
    Ping: () => Effect.map(Clock.currentTimeMillis, (millis) => ({ timestamp: new Date(millis).toISOString() })),
    ChatCompletion: (request) => guard(chat.complete(request)),
    ChatCompletionStream: (request) => Push.toStream(guardPush(guard, chat.push(request))),
    Embedding: (request) =>
      guard(openai.createEmbedding({ ...request, model: request.model ?? config.openai.embeddingModel })),
    ToolsList: () => Effect.map(registry.definitions, (tools) => ({ tools })),
    ToolExecute: ({ tool_call }) => registry.execute(tool_call)
  })
}))

const pushHandlers = Layer.effect(
  PushHandlers,
  Effect.gen(function*() {
    const chat = yield* Chat
    const { guard } = yield* Admission
    return new Map([["ChatCompletionStream", pushHandler(ChatCompletionRequest, (request) => guardPush(guard, chat.push(request)))]])
  })
)

/** A push stream admitted like any model call. */
const guardPush = <A, E>(
  guard: Admission["Type"]["guard"],
  push: Push.PushStream<A, E>
): Push.PushStream<A, E | OverloadedError> =>
(sink) => guard(push(sink))

export const layer = Layer.merge(rpcHandlers, pushHandlers).pipe(
  Layer.provide(Chat.layer),
  Layer.provide(Admission.layerConfig)
)
