/**
 * The one implementation of every AIBase request. Both transports serve
 * these handlers: /rpc through RpcServer, /ws through the envelope adapter.
 */
import { Clock, Context, Effect, Either, FiberRef, Layer, type ParseResult, Schema } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { OpenAi } from "../openai/OpenAi.js"
import { ChatCompletionRequest } from "../protocol/Chat.js"
import { Admission } from "../hub/Admission.js"
import type { AiBaseError, OverloadedError } from "../protocol/Errors.js"
import { type AiBaseRpc, AiBaseRpcs, type ChatStreamEvent } from "../protocol/Rpcs.js"
import * as RequestRecord from "../ledger/RequestRecord.js"
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

/**
 * Runs `f` with the record of the current request, if it is recorded (see
 * Ledger): one FiberRef read per request.
 */
const withRecord = <A, E, R>(
  f: (record: RequestRecord.RequestRecord | undefined) => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> => Effect.flatMap(FiberRef.get(RequestRecord.current), f)

/** The streamed completion, admitted, with each event noted in the request's record on its way out. */
const makeStreamPush = Effect.gen(function*() {
  const config = yield* AppConfig
  const chat = yield* Chat
  const { guard } = yield* Admission
  return (request: ChatCompletionRequest): Push.PushStream<ChatStreamEvent, AiBaseError> => (sink) =>
    withRecord((record) => {
      const push = guardPush(guard, chat.push(request))
      if (record === undefined) return push(sink)
      record.requested(request.model ?? config.openai.model, request.messages)
      return push((event) => {
        record.onStreamEvent(event)
        return sink(event)
      })
    })
})

const rpcHandlers = AiBaseRpcs.toLayer(Effect.gen(function*() {
  const config = yield* AppConfig
  const openai = yield* OpenAi
  const registry = yield* ToolRegistry
  const chat = yield* Chat
  const { guard } = yield* Admission
  const streamPush = yield* makeStreamPush

  return AiBaseRpcs.of({
    Ping: () => Effect.map(Clock.currentTimeMillis, (millis) => ({ timestamp: new Date(millis).toISOString() })),
    ChatCompletion: (request) =>
      withRecord((record) => {
        const completion = guard(chat.complete(request))
        if (record === undefined) return completion
        record.requested(request.model ?? config.openai.model, request.messages)
        return Effect.tap(completion, (response) => record.onCompletion(response))
      }),
    ChatCompletionStream: (request) => Push.toStream(streamPush(request)),
    Embedding: (request) =>
      withRecord((record) => {
        const model = request.model ?? config.openai.embeddingModel
        const embedding = guard(openai.createEmbedding({ ...request, model }))
        if (record === undefined) return embedding
        record.requested(model, request.input)
        return Effect.tap(embedding, (response) => record.onEmbedding(response))
      }),
    ToolsList: () => Effect.map(registry.definitions, (tools) => ({ tools })),
    ToolExecute: ({ tool_call }) =>
      withRecord((record) => {
        record?.toolsCalled.push(tool_call.function.name)
        return registry.execute(tool_call)
      })
  })
}))

const pushHandlers = Layer.effect(
  PushHandlers,
  Effect.map(makeStreamPush, (streamPush) => new Map([["ChatCompletionStream", pushHandler(ChatCompletionRequest, streamPush)]]))
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
