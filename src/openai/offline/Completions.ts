/**
 * The offline model's reply in OpenAI's shapes: a whole `ChatCompletion`, or
 * the chunks of a streamed one (text word by word; tool calls as a header
 * delta then their arguments in pieces, as OpenAI streams them).
 */
import type { ChatCompletion, ChatCompletionChunk, UpstreamChatRequest, Usage } from "../../protocol/Chat.js"
import type { ToolCall } from "../../protocol/Tools.js"
import { slices, words } from "./Text.js"
import type { Reply } from "./Tools.js"

/** A planned reply with what identifies it: its completion id, timestamp, numbered calls and usage. */
export interface Answer {
  readonly reply: Reply
  readonly id: string
  /** Seconds since the epoch. */
  readonly created: number
  /** The reply's calls with their ids (empty for a text reply). */
  readonly calls: ReadonlyArray<ToolCall>
  readonly usage: Usage
}

/** The chunks of a streamed reply; the model paces `paced` and sends the others at once. */
export interface Chunks {
  readonly head: ReadonlyArray<ChatCompletionChunk>
  readonly paced: ReadonlyArray<ChatCompletionChunk>
  readonly tail: ReadonlyArray<ChatCompletionChunk>
}

const ARGUMENT_PIECE_LENGTH = 8

export const completion = (request: UpstreamChatRequest, { calls, created, id, reply, usage }: Answer): ChatCompletion => ({
  id,
  object: "chat.completion",
  created,
  model: request.model,
  choices: [{
    index: 0,
    message: reply._tag === "Text"
      ? { role: "assistant", content: reply.content, refusal: null }
      : { role: "assistant", content: null, refusal: null, tool_calls: [...calls] },
    finish_reason: reply._tag === "Text" ? "stop" : "tool_calls",
    logprobs: null
  }],
  usage
})

type Delta = ChatCompletionChunk["choices"][number]["delta"]

export const chunks = (request: UpstreamChatRequest, { calls, created, id, reply, usage }: Answer): Chunks => {
  const chunk = (delta: Delta, finishReason: string | null = null): ChatCompletionChunk => ({
    id,
    object: "chat.completion.chunk",
    created,
    model: request.model,
    choices: [{ index: 0, delta, finish_reason: finishReason }]
  })
  const usageChunk: ChatCompletionChunk = {
    id,
    object: "chat.completion.chunk",
    created,
    model: request.model,
    choices: [],
    usage
  }
  if (reply._tag === "Text") {
    return {
      head: [chunk({ role: "assistant", content: "" })],
      paced: words(reply.content).map((word) => chunk({ content: word })),
      tail: [chunk({}, "stop"), usageChunk]
    }
  }
  // Like OpenAI: per call a header delta (id, name, empty arguments), then the arguments in pieces.
  const deltas: Array<Delta> = calls.flatMap((toolCall, index) => [
    {
      ...(index === 0 ? { role: "assistant", content: null } : {}),
      tool_calls: [{ index, id: toolCall.id, type: "function", function: { name: toolCall.function.name, arguments: "" } }]
    },
    ...slices(toolCall.function.arguments, ARGUMENT_PIECE_LENGTH).map((piece): Delta => ({
      tool_calls: [{ index, function: { arguments: piece } }]
    }))
  ])
  return { head: [], paced: deltas.map((delta) => chunk(delta)), tail: [chunk({}, "tool_calls"), usageChunk] }
}
