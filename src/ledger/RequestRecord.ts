/**
 * What AIBase learns about one request while it runs: who asked, over which
 * transport, which model answered, the tokens, the time to the first token,
 * the tools. The transport starts a record, the handlers fill in what only
 * they know (through `current`, read once per request, never per chunk), and
 * the transport finishes it with the request's exit.
 */
import { RpcServer } from "@effect/rpc"
import { Cause, Exit, FiberId, FiberRef, HashSet, Option } from "effect"
import { interruptedBy, isShutdown } from "../hub/Hub.js"
import type { ChatCompletionResponse } from "../protocol/Chat.js"
import type { EmbeddingResponse } from "../protocol/Embedding.js"
import { isAiBaseError } from "../protocol/Errors.js"
import type { ChatStreamEvent } from "../protocol/Rpcs.js"
import type { ToolRound } from "../protocol/Tools.js"

/** Who made a request, and through what. */
export interface Caller {
  readonly transport: string
  /** The connection, unique across instances; null for in-process calls. */
  readonly connectionId: string | null
  /** A stable, non-reversible id of the caller's token, or `anonymous` (see Principal). */
  readonly principal: string
}

interface Usage {
  readonly prompt_tokens?: number | undefined
  readonly completion_tokens?: number | undefined
  readonly total_tokens?: number | undefined
}

/**
 * One call to the model provider within a request (a tool loop makes several),
 * kept for the request's trace (see observability/Tracing).
 */
export interface UpstreamCall {
  readonly model: string
  /** `performance.now()` when it started and ended. */
  readonly startHr: number
  readonly endHr: number
  /** The error code when it failed (e.g. `cancelled` when interrupted); null when ok. */
  readonly error: string | null
  readonly responseModel: string | null
  readonly inputTokens: number | null
  readonly outputTokens: number | null
  readonly finishReason: string | null
}

/** One tool execution within a request (the loop's, or a direct `tool_execute`). */
export interface ToolCallRecord {
  readonly name: string
  readonly callId: string | null
  readonly startHr: number
  readonly endHr: number
  /** `tool_error` when the tool answered with an error, the error code when interrupted; null when ok. */
  readonly error: string | null
}

/** The caller of a request made in-process, without a transport. */
export const inProcess: Caller = { transport: "in_process", connectionId: null, principal: "anonymous" }

/** The GenAI operation (semantic conventions' `gen_ai.operation.name`) of each recorded request type. */
const OPERATIONS: Readonly<Record<string, string>> = {
  chat_completion: "chat",
  chat_completion_stream: "chat",
  embedding: "embeddings",
  tool_execute: "execute_tool"
}

export class RequestRecord {
  modelRequested: string | null = null
  modelAnswered: string | null = null
  /** `performance.now()` when the first content or tool-call delta arrived (streamed completions). */
  firstTokenAt: number | undefined = undefined
  inputTokens: number | null = null
  outputTokens: number | null = null
  totalTokens: number | null = null
  toolRounds = 0
  readonly toolsCalled: Array<string> = []
  /**
   * Who finishes the record: the transport, when the request ends (the
   * default), or a resumable stream, when it ends (it outlives its request).
   */
  finishedBy: "request" | "stream" = "request"
  /** The request's messages (or input) and final content; set only when content is stored. */
  content: { request?: unknown; response?: unknown } | undefined = undefined
  /** How the request ended; set once by `finish`. */
  outcome: Outcome | undefined = undefined
  /** `performance.now()` when it ended. */
  finishedHr = 0
  /** Who served it (`openai`, `offline`); null when no model was asked. */
  provider: string | null = null
  /** Why the model stopped, per choice of the final response. */
  finishReasons: ReadonlyArray<string> = []
  /** The model calls it made, in order of their end. */
  readonly upstreamCalls: Array<UpstreamCall> = []
  /** The tools it ran, in order of their end. */
  readonly toolCalls: Array<ToolCallRecord> = []

  constructor(
    /** The client's request id (its `request_id` on /ws, the RPC request id on /rpc). */
    readonly requestId: string,
    /** The request type by its /ws name (`chat_completion_stream`, ...). */
    readonly type: string,
    readonly caller: Caller,
    /** Whether handlers should keep the content (STORE_CONTENT). */
    readonly storeContent: boolean,
    /** Epoch milliseconds. */
    readonly startedAt: number = Date.now(),
    /** `performance.now()` at the start, for durations. */
    readonly startedHr: number = performance.now()
  ) {}

  /** `chat`, `embeddings` or `execute_tool`. */
  get operation(): string {
    return OPERATIONS[this.type] ?? this.type
  }

  /** Ends the record with its request's exit (once: later calls keep the first outcome). */
  finish(exit: Exit.Exit<unknown, unknown>): Outcome {
    if (this.outcome === undefined) {
      this.outcome = outcomeOf(exit)
      this.finishedHr = performance.now()
    }
    return this.outcome
  }

  /** Milliseconds from the start to the end (or to now, while running). */
  get durationMs(): number {
    return (this.outcome === undefined ? performance.now() : this.finishedHr) - this.startedHr
  }

  /** Milliseconds from the start to the first token; null if none came (or the request does not stream). */
  get timeToFirstTokenMs(): number | null {
    return this.firstTokenAt === undefined ? null : this.firstTokenAt - this.startedHr
  }

  /** The model asked for (after defaults), and the request's content when it is kept. */
  requested(model: string, content: unknown): void {
    this.modelRequested = model
    if (this.storeContent) this.content = { request: content }
  }

  /** Reads a streamed completion's event as it passes to the client (once per event: keep it cheap). */
  onStreamEvent(event: ChatStreamEvent): void {
    switch (event._tag) {
      case "chat_completion_stream_chunk": {
        const chunk = event.data
        if (this.modelAnswered === null) this.modelAnswered = chunk.model
        if (this.firstTokenAt === undefined) {
          const delta = chunk.choices[0]?.delta
          if (delta !== undefined && ((delta.content ?? "") !== "" || delta.tool_calls !== undefined)) {
            this.firstTokenAt = performance.now()
          }
        }
        return
      }
      case "chat_completion_stream_end": {
        const end = event.data
        // The end event carries the final reason (the last round's, or the loop's own): no per-chunk check needed.
        if (end.finish_reason !== null) this.finishReasons = [end.finish_reason]
        this.addUsage(end.usage)
        this.addRounds(end.tool_rounds)
        if (this.storeContent) this.content = { ...this.content, response: end.content }
        return
      }
      case "tool_execution":
        return
    }
  }

  /** Reads a whole completion. */
  onCompletion(response: ChatCompletionResponse): void {
    this.modelAnswered = response.model
    const reasons: Array<string> = []
    for (const choice of response.choices) if (choice.finish_reason !== null) reasons.push(choice.finish_reason)
    this.finishReasons = reasons
    this.addUsage(response.usage)
    this.addRounds(response.tool_rounds)
    if (this.storeContent) this.content = { ...this.content, response: response.choices[0]?.message.content ?? null }
  }

  /** Reads an embedding response (its vectors are never kept). */
  onEmbedding(response: EmbeddingResponse): void {
    this.modelAnswered = response.model
    this.inputTokens = response.usage.prompt_tokens
    this.totalTokens = response.usage.total_tokens
  }

  /** Notes a finished model call (once per call, never per chunk). */
  addUpstreamCall(call: UpstreamCall): void {
    this.upstreamCalls.push(call)
  }

  /** Notes a finished tool execution. */
  addToolCall(call: ToolCallRecord): void {
    this.toolCalls.push(call)
  }

  private addRounds(rounds: ReadonlyArray<ToolRound> | undefined): void {
    if (rounds === undefined) return
    this.toolRounds = rounds.length
    for (const round of rounds) for (const execution of round.executions) this.toolsCalled.push(execution.tool_call.function.name)
  }

  /** Adds a round's or a response's usage. */
  addUsage(usage: Usage | null | undefined): void {
    if (usage === null || usage === undefined) return
    if (usage.prompt_tokens !== undefined) this.inputTokens = (this.inputTokens ?? 0) + usage.prompt_tokens
    if (usage.completion_tokens !== undefined) this.outputTokens = (this.outputTokens ?? 0) + usage.completion_tokens
    if (usage.total_tokens !== undefined) this.totalTokens = (this.totalTokens ?? 0) + usage.total_tokens
  }
}

/** The record of the request the current fiber serves (undefined outside a recorded request). */
export const current: FiberRef.FiberRef<RequestRecord | undefined> = FiberRef.unsafeMake<RequestRecord | undefined>(
  undefined
)

/**
 * Who is on the connection an /rpc request came in on: set on the fiber
 * that serves the socket, whose FiberRefs RpcServer gives every request.
 */
export const currentCaller: FiberRef.FiberRef<Caller | undefined> = FiberRef.unsafeMake<Caller | undefined>(undefined)

/** Requests interrupted because their client went away are interrupted by this FiberId. */
export const DisconnectFiberId: FiberId.FiberId = FiberId.make(-1002, 0)

/** Whether an interruption came from the client going away (on /ws, or on /rpc through RpcServer). */
export const isDisconnect = (interruptors: HashSet.HashSet<FiberId.FiberId>): boolean =>
  interruptedBy(interruptors, DisconnectFiberId) || interruptedBy(interruptors, RpcServer.fiberIdTransientInterrupt)

export interface Outcome {
  /** `ok`, or the error category. */
  readonly status: string
  /** The error's code; null when ok. */
  readonly code: string | null
}

const ok: Outcome = { status: "ok", code: null }
const disconnected: Outcome = { status: "cancelled", code: "client_disconnected" }
const cancelled: Outcome = { status: "cancelled", code: "cancelled" }
const stopped: Outcome = { status: "unavailable", code: "shutting_down" }
const internal: Outcome = { status: "internal", code: "internal_error" }

/** How a request ended, in the protocol's categories. */
export const outcomeOf = (exit: Exit.Exit<unknown, unknown>): Outcome => {
  if (Exit.isSuccess(exit)) return ok
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    return isAiBaseError(error) ? { status: error.category, code: error.code } : internal
  }
  if (Cause.isInterruptedOnly(exit.cause)) {
    const interruptors = Cause.interruptors(exit.cause)
    if (isShutdown(interruptors)) return stopped
    return isDisconnect(interruptors) ? disconnected : cancelled
  }
  return internal
}
