/**
 * The one implementation of every AIBase request. Both transports serve
 * these handlers: /rpc through RpcServer, /ws through the envelope adapter.
 */
import { Clock, Context, Effect, Either, FiberRef, identity, Layer, type ParseResult, Schema } from "effect"
import { decodeSafely } from "../protocol/Validation.js"
import { AppConfig } from "../config/AppConfig.js"
import { OpenAi } from "../openai/OpenAi.js"
import { ChatCompletionRequest } from "../protocol/Chat.js"
import { Admission } from "../hub/Admission.js"
import type { AiBaseError, OverloadedError } from "../protocol/Errors.js"
import { type AiBaseRpc, AiBaseRpcs, type ChatStreamEvent, ResumeRequest } from "../protocol/Rpcs.js"
import { Ledger } from "../ledger/Ledger.js"
import { finishRecord, Telemetry } from "../observability/Telemetry.js"
import { ResumableStreams } from "../resume/ResumableStreams.js"
import * as RequestRecord from "../ledger/RequestRecord.js"
import * as Push from "../stream/Push.js"
import { ToolRegistry } from "../tools/ToolRegistry.js"
import { Chat, recordToolCall, recordUpstreamCall } from "./Chat.js"

/** A streamed request's handler in push form, with the decoding of its payload. */
export interface PushHandler {
  readonly run: (
    payload: unknown,
    caller: RequestRecord.Caller
  ) => Either.Either<Push.PushStream<StreamEvent, AiBaseError>, ParseResult.ParseError>
}

/**
 * The element of a stream: its tag names the /ws frame, `data` is the
 * frame's data, `seq` its place in the stream when the stream numbers it
 * (resumable streams; otherwise the transport counts).
 */
export interface StreamEvent {
  readonly _tag: string
  readonly data: unknown
  readonly seq?: number | undefined
  /** `data` already in JSON, when the stream had to encode it anyway (resumable streams store it). */
  readonly json?: string | undefined
}

const pushHandler = <P, I, A extends StreamEvent>(
  payload: Schema.Schema<P, I>,
  run: (payload: P, caller: RequestRecord.Caller) => Push.PushStream<A, AiBaseError>
): PushHandler => {
  const decode = decodeSafely(Schema.decodeUnknownEither(payload, { onExcessProperty: "ignore" }), identity)
  return { run: (raw, caller) => Either.map(decode(raw), (decoded) => run(decoded, caller)) }
}

/** The caller of an /rpc request (see RequestRecord.currentCaller). */
const rpcCaller = Effect.map(FiberRef.get(RequestRecord.currentCaller), (caller) => caller ?? RequestRecord.inProcess)

/** Numbers the events of a stream that does not number them itself (/rpc sends `seq` on every event). */
const numbered = (push: Push.PushStream<ChatStreamEvent, AiBaseError>): Push.PushStream<ChatStreamEvent, AiBaseError> =>
(sink) =>
  Effect.suspend(() => {
    let seq = 0
    return push((event, json) => {
      seq = event.seq ?? seq + 1
      return sink(event.seq === undefined ? { ...event, seq } : event, json)
    })
  })

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

/**
 * The streamed completion, admitted, with each event noted in the request's
 * record on its way out. A resumable one runs on its own (see
 * ResumableStreams): its record is finished when the stream ends, not when
 * the request that started it does.
 */
const makeStreamPush = Effect.gen(function*() {
  const chat = yield* Chat
  const { guard } = yield* Admission
  const resumable = yield* ResumableStreams
  const finish = finishRecord(yield* Ledger, yield* Telemetry)
  return (request: ChatCompletionRequest, caller: RequestRecord.Caller): Push.PushStream<ChatStreamEvent, AiBaseError> =>
  (sink) =>
    withRecord((record) => {
      const push = guardPush(guard, chat.push(request))
      const observed: Push.PushStream<ChatStreamEvent, AiBaseError> = record === undefined ? push : (sink) => {
        record.requested(request.model ?? chat.defaults.model, request.messages)
        return push((event, json) => {
          record.onStreamEvent(event)
          return sink(event, json)
        })
      }
      if (request.resumable !== true) return observed(sink)
      if (record !== undefined) record.finishedBy = "stream"
      const ownRecord: Push.PushStream<ChatStreamEvent, AiBaseError> = record === undefined
        ? observed
        : (sink) =>
          observed(sink).pipe(
            // A resumable stream runs on a fiber of its own, which would not see the record (Chat notes its calls there).
            Effect.locally(RequestRecord.current, record),
            Effect.onExit((exit) => finish(record, exit))
          )
      return resumable.start(ownRecord, caller.principal)(sink)
    })
})

const rpcHandlers = AiBaseRpcs.toLayer(Effect.gen(function*() {
  const config = yield* AppConfig
  const openai = yield* OpenAi
  const registry = yield* ToolRegistry
  const chat = yield* Chat
  const { guard } = yield* Admission
  const streamPush = yield* makeStreamPush
  const resumable = yield* ResumableStreams

  return AiBaseRpcs.of({
    Ping: () => Effect.map(Clock.currentTimeMillis, (millis) => ({ timestamp: new Date(millis).toISOString() })),
    ChatCompletion: (request) =>
      withRecord((record) => {
        const completion = guard(chat.complete(request))
        if (record === undefined) return completion
        record.requested(request.model ?? chat.defaults.model, request.messages)
        return Effect.tap(completion, (response) => record.onCompletion(response))
      }),
    ChatCompletionStream: (request) =>
      Push.toStream<ChatStreamEvent, AiBaseError, never>((sink) =>
        Effect.flatMap(rpcCaller, (caller) => numbered(streamPush(request, caller))(sink))
      ),
    Resume: (request) =>
      Push.toStream<ChatStreamEvent, AiBaseError, never>((sink) =>
        Effect.flatMap(rpcCaller, (caller) => resumable.resume(request, caller.principal)(sink))
      ),
    Embedding: (request) =>
      withRecord((record) => {
        const model = request.model ?? config.openai.embeddingModel
        if (record === undefined) return guard(openai.createEmbedding({ ...request, model }))
        record.requested(model, request.input)
        record.provider = openai.provider
        const embedding = guard(
          recordUpstreamCall(record, model, openai.createEmbedding({ ...request, model }), (response) => ({
            responseModel: response.model,
            inputTokens: response.usage.prompt_tokens,
            outputTokens: null,
            finishReason: null
          }))
        )
        return Effect.tap(embedding, (response) => record.onEmbedding(response))
      }),
    ToolsList: () => Effect.map(registry.definitions, (tools) => ({ tools })),
    ToolExecute: ({ tool_call }) =>
      withRecord((record) => {
        record?.toolsCalled.push(tool_call.function.name)
        // The request is the tool's execution: its trace span is `execute_tool <name>` (see observability/Tracing).
        return recordToolCall(record, tool_call, registry.execute(tool_call))
      })
  })
}))

const pushHandlers = Layer.effect(
  PushHandlers,
  Effect.gen(function*() {
    const streamPush = yield* makeStreamPush
    const resumable = yield* ResumableStreams
    return new Map<AiBaseRpc["_tag"], PushHandler>([
      ["ChatCompletionStream", pushHandler(ChatCompletionRequest, streamPush)],
      ["Resume", pushHandler(ResumeRequest, (request, caller) => resumable.resume(request, caller.principal))]
    ])
  })
)

/** A push stream admitted like any model call. */
const guardPush = <A, E>(
  guard: Admission["Type"]["guard"],
  push: Push.PushStream<A, E>
): Push.PushStream<A, E | OverloadedError> =>
(sink) => guard(push(sink))

/** The handlers of every Rpc, in both forms; they need the Chat service (see `Chat.layer`). */
export const layer = Layer.merge(rpcHandlers, pushHandlers).pipe(
  Layer.provide(Admission.layerConfig)
)
