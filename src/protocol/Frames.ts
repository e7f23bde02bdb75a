/**
 * The JSON envelope spoken on /ws: `{type, request_id, payload}` in,
 * `{type, request_id, data}` or an error frame out. The frame types of
 * each request come from the RpcGroup, so a frame's shape is written once.
 */
import type { Rpc } from "@effect/rpc"
import { Schema } from "effect"
import { type AiBaseError, ErrorCategory } from "./Errors.js"
import type { AiBaseRpc, ChatStreamEvent } from "./Rpcs.js"
import { STREAM_END, WireNames } from "./Rpcs.js"

export const RequestId = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(128))

/** Every incoming frame is first read as this; the payload is decoded by type. */
export const RequestEnvelope = Schema.Struct({
  type: Schema.String,
  request_id: RequestId,
  payload: Schema.optional(Schema.Unknown)
})

/** `cancel` is a /ws control request: /rpc clients interrupt their fiber instead. */
export const CANCEL = "cancel"
export const CANCEL_RESPONSE = "cancel_response"
export const CancelRequest = Schema.Struct({ request_id: RequestId })
export const CancelResponse = Schema.Struct({ request_id: Schema.String, cancelled: Schema.Boolean })

export const ErrorFrame = Schema.Struct({
  type: Schema.Literal("error"),
  /** null when the frame could not be read far enough to find its id. */
  request_id: Schema.NullOr(Schema.String),
  error: Schema.String,
  data: Schema.Struct({ category: ErrorCategory, code: Schema.String, retryable: Schema.Boolean }),
  /** Set when the error ends a stream: its place in the stream. */
  seq: Schema.optional(Schema.Int)
})
export type ErrorFrame = typeof ErrorFrame.Type

/** The one place an error becomes a frame. */
export const errorFrame = (requestId: string | null, error: AiBaseError, seq?: number): ErrorFrame => ({
  type: "error",
  request_id: requestId,
  error: error.message,
  data: { category: error.category, code: error.code, retryable: error.retryable },
  ...(seq === undefined ? {} : { seq })
})

/** Whether a frame is the last one its request gets (nothing follows it). */
export const isFinalFrame = (frame: { readonly type: string }): boolean =>
  frame.type === "error" || frame.type === "pong" || frame.type === STREAM_END || frame.type.endsWith("_response")

// ---------------------------------------------------------------------------
// frame types for clients (the browser example imports these)

type Names = typeof WireNames
type RpcOf<Tag extends AiBaseRpc["_tag"]> = Extract<AiBaseRpc, { readonly _tag: Tag }>

/** Requests without a payload (ping, tools_list) accept an empty object. */
type PayloadOf<P> = [P] extends [void] ? Record<string, never> : P

/** A request frame as a client writes it. */
export type ClientFrame =
  | {
    [Tag in keyof Names]: {
      readonly type: Names[Tag]["request"]
      readonly request_id: string
      readonly payload?: PayloadOf<Schema.Schema.Encoded<RpcOf<Tag>["payloadSchema"]>>
    }
  }[keyof Names]
  | { readonly type: typeof CANCEL; readonly request_id: string; readonly payload: typeof CancelRequest.Encoded }

type UnaryTags = { [Tag in keyof Names]: Names[Tag] extends { readonly response: string } ? Tag : never }[keyof Names]

/** A frame as a client reads it. */
export type ServerFrame =
  | {
    [Tag in UnaryTags]: {
      readonly type: Names[Tag] extends { readonly response: infer R } ? R : never
      readonly request_id: string
      readonly data: Schema.Schema.Encoded<RpcOf<Tag>["successSchema"]>
    }
  }[UnaryTags]
  | {
    [E in ChatStreamEvent as E["_tag"]]: {
      readonly type: E["_tag"]
      readonly request_id: string
      /** The frame's place in its stream: 1, 2, 3, ... */
      readonly seq: number
      readonly data: Rpc.SuccessChunkEncoded<RpcOf<"ChatCompletionStream">> extends infer C
        ? C extends { readonly _tag: E["_tag"]; readonly data: infer D } ? D : never
        : never
    }
  }[ChatStreamEvent["_tag"]]
  | { readonly type: typeof CANCEL_RESPONSE; readonly request_id: string; readonly data: typeof CancelResponse.Encoded }
  | typeof ErrorFrame.Encoded
