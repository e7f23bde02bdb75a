/**
 * Assembles a streamed completion from its chunks: the whole text, the
 * finish reason, usage, and complete tool calls out of their deltas
 * (including parallel calls, which OpenAI interleaves by index).
 */
import type { ChatCompletionChunk, Usage } from "../protocol/Chat.js"
import type { ToolCall } from "../protocol/Tools.js"

export interface Assembled {
  readonly content: string
  readonly finishReason: string | null
  readonly toolCalls: ReadonlyArray<ToolCall>
  readonly usage: Usage | undefined
}

interface PartialCall {
  id: string
  name: string
  readonly args: Array<string>
}

export class StreamAccumulator {
  private readonly content: Array<string> = []
  private readonly calls = new Map<number, PartialCall>()
  private finishReason: string | null = null
  private usage: Usage | undefined = undefined

  add(chunk: ChatCompletionChunk): void {
    if (chunk.usage) this.usage = chunk.usage
    for (const choice of chunk.choices) {
      // AIBase asks for one choice; other indices would be a different completion.
      if (choice.index !== 0) continue
      if (choice.finish_reason !== null) this.finishReason = choice.finish_reason
      const { content, tool_calls } = choice.delta
      if (content) this.content.push(content)
      if (tool_calls) {
        for (const delta of tool_calls) {
          let call = this.calls.get(delta.index)
          if (call === undefined) {
            call = { id: "", name: "", args: [] }
            this.calls.set(delta.index, call)
          }
          if (delta.id) call.id = delta.id
          if (delta.function?.name) call.name += delta.function.name
          if (delta.function?.arguments) call.args.push(delta.function.arguments)
        }
      }
    }
  }

  result(): Assembled {
    const toolCalls = [...this.calls.entries()]
      .sort(([a], [b]) => a - b)
      .map(([, call]): ToolCall => ({
        id: call.id,
        type: "function",
        function: { name: call.name, arguments: call.args.join("") }
      }))
    return { content: this.content.join(""), finishReason: this.finishReason, toolCalls, usage: this.usage }
  }
}

/** Adds up token usage across the model calls of one request. */
export const addUsage = (a: Usage | undefined, b: Usage | undefined): Usage | undefined =>
  a === undefined ? b : b === undefined ? a : {
    prompt_tokens: a.prompt_tokens + b.prompt_tokens,
    completion_tokens: a.completion_tokens + b.completion_tokens,
    total_tokens: a.total_tokens + b.total_tokens
  }
