/**
 * Every AIBase request, defined once: one RpcGroup with Schema payloads,
 * success and error types. /rpc serves it natively; /ws adapts it to the
 * JSON envelope protocol using the wire names in `WireNames`.
 */
import { Rpc, RpcGroup } from "@effect/rpc"
import { Schema } from "effect"
import { ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatStreamEnd } from "./Chat.js"
import { EmbeddingRequest, EmbeddingResponse } from "./Embedding.js"
import { AiBaseError } from "./Errors.js"
import { ToolExecuteRequest, ToolExecution, ToolResult, ToolsListResponse } from "./Tools.js"

export const Pong = Schema.Struct({ timestamp: Schema.String })

/**
 * The elements of a streamed completion. Their tags are the /ws frame types,
 * so both transports use the same names.
 */
/**
 * Each event's place in its stream (1, 2, 3, ...). Set on every event /rpc
 * sends; on /ws it is the frame's `seq`. A resumed stream keeps the numbers.
 */
const seq = Schema.optional(Schema.Int.pipe(Schema.positive()))
export const ChatStreamChunkEvent = Schema.TaggedStruct("chat_completion_stream_chunk", { data: ChatCompletionChunk, seq })
export const ToolExecutionEvent = Schema.TaggedStruct("tool_execution", { data: ToolExecution, seq })
/** The frame that ends a stream; nothing follows it for that request. */
export const STREAM_END = "chat_completion_stream_end"
export const ChatStreamEndEvent = Schema.TaggedStruct(STREAM_END, { data: ChatStreamEnd, seq })
/** The first event of a resumable stream: how to resume it. */
export const STREAM_START = "chat_completion_stream_start"
export const StreamStart = Schema.Struct({
  /** Unguessable (144 random bits, URL-safe). */
  stream_id: Schema.String,
  /** ISO 8601: the stream can be resumed at least until then. */
  resumable_until: Schema.String
})
export const ChatStreamStartEvent = Schema.TaggedStruct(STREAM_START, { data: StreamStart, seq })
export const ChatStreamEvent = Schema.Union(ChatStreamStartEvent, ChatStreamChunkEvent, ToolExecutionEvent, ChatStreamEndEvent)
export type ChatStreamEvent = typeof ChatStreamEvent.Type

/** The payload of `resume`: a stream, and the last `seq` the client has (default 0: all of it). */
export const ResumeRequest = Schema.Struct({
  stream_id: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(128)),
  after: Schema.optional(Schema.Int.pipe(Schema.nonNegative()))
})
export type ResumeRequest = typeof ResumeRequest.Type

export class AiBaseRpcs extends RpcGroup.make(
  Rpc.make("Ping", { success: Pong, error: AiBaseError }),
  Rpc.make("ChatCompletion", { payload: ChatCompletionRequest, success: ChatCompletionResponse, error: AiBaseError }),
  Rpc.make("ChatCompletionStream", {
    payload: ChatCompletionRequest,
    success: ChatStreamEvent,
    error: AiBaseError,
    stream: true
  }),
  Rpc.make("Embedding", { payload: EmbeddingRequest, success: EmbeddingResponse, error: AiBaseError }),
  Rpc.make("ToolsList", { success: ToolsListResponse, error: AiBaseError }),
  Rpc.make("ToolExecute", { payload: ToolExecuteRequest, success: ToolResult, error: AiBaseError }),
  Rpc.make("Resume", { payload: ResumeRequest, success: ChatStreamEvent, error: AiBaseError, stream: true })
) {}

export type AiBaseRpc = RpcGroup.Rpcs<typeof AiBaseRpcs>

/**
 * The /ws names of each request: the `type` a client sends and, for requests
 * with a single answer, the `type` of that answer. A streamed request answers
 * with frames named by its events' tags; `end` names the event that ends it.
 */
export const WireNames = {
  Ping: { request: "ping", response: "pong" },
  ChatCompletion: { request: "chat_completion", response: "chat_completion_response" },
  ChatCompletionStream: { request: "chat_completion_stream", end: STREAM_END },
  Embedding: { request: "embedding", response: "embedding_response" },
  ToolsList: { request: "tools_list", response: "tools_list_response" },
  ToolExecute: { request: "tool_execute", response: "tool_execute_response" },
  Resume: { request: "resume", end: STREAM_END }
} as const satisfies Record<AiBaseRpc["_tag"], WireName>

export interface WireName {
  readonly request: string
  readonly response?: string
  readonly end?: string
}

/**
 * Stream events whose decoded form is already their JSON form (decoding only
 * filled in defaults), so the /ws adapter writes them without encoding: the
 * chunks, which are most of the frames.
 */
export const PLAIN_EVENTS: ReadonlySet<string> = new Set(["chat_completion_stream_chunk"])
