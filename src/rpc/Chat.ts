/**
 * Chat completions as clients ask for them: configured defaults filled in,
 * tools named in any of the accepted shapes turned into OpenAI's, and, with
 * `auto_execute_tools`, the server-side tool loop (call the model, run the
 * registry's tools, call it again) for both whole and streamed completions.
 */
import { Context, Effect, Exit, FiberRef, Layer, Option, Stream } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import * as RequestRecord from "../ledger/RequestRecord.js"
import { OpenAi, pushChatCompletion } from "../openai/OpenAi.js"
import {
  type AssistantMessage,
  type ChatCompletionRequest,
  type ChatCompletionResponse,
  type ChatMessage,
  type ToolMessage,
  TOOL_ROUNDS_EXHAUSTED,
  type ToolsSelection,
  type UpstreamChatRequest,
  type Usage
} from "../protocol/Chat.js"
import { type AiBaseError, ValidationError } from "../protocol/Errors.js"
import type { ChatStreamEvent } from "../protocol/Rpcs.js"
import type { FunctionTool, ToolCall, ToolExecution, ToolResult, ToolRound } from "../protocol/Tools.js"
import * as Push from "../stream/Push.js"
import { ToolRegistry } from "../tools/ToolRegistry.js"
import { addUsage, StreamAccumulator } from "./StreamAccumulator.js"

export const DEFAULT_MAX_TOOL_ROUNDS = 5
/** Calls of one round that run at the same time. */
const TOOL_CONCURRENCY = 8

export class Chat extends Context.Tag("aibase/Chat")<Chat, {
  readonly complete: (request: ChatCompletionRequest) => Effect.Effect<ChatCompletionResponse, AiBaseError>
  readonly stream: (request: ChatCompletionRequest) => Stream.Stream<ChatStreamEvent, AiBaseError>
  /** `stream` as a push stream: the form the /ws transport runs. */
  readonly push: (request: ChatCompletionRequest) => Push.PushStream<ChatStreamEvent, AiBaseError>
}>() {
  static readonly make = Effect.gen(function*() {
    const config = yield* AppConfig
    const openai = yield* OpenAi
    const registry = yield* ToolRegistry

    const resolveTools = Effect.fnUntraced(function*(selection: ToolsSelection) {
      if (selection === "registry") {
        return (yield* registry.definitions).map(toFunctionTool)
      }
      const tools: Array<FunctionTool> = []
      for (const entry of selection) {
        if (typeof entry !== "string") {
          tools.push("type" in entry ? entry : toFunctionTool(entry))
          continue
        }
        const definition = yield* registry.lookup(entry)
        if (Option.isNone(definition)) {
          const known = (yield* registry.definitions).map((d) => d.name).join(", ") || "none"
          return yield* new ValidationError({
            code: "unknown_tool",
            message: `tools: no registered tool is named "${entry}" (registered: ${known})`
          })
        }
        tools.push(toFunctionTool(definition.value))
      }
      return tools
    })

    /** Fills in the configured defaults and puts tools into OpenAI's shape. */
    const resolve = Effect.fnUntraced(function*(request: ChatCompletionRequest) {
      const { auto_execute_tools: _auto, max_tool_rounds: _rounds, model, resumable: _resumable, tools, ...options } = request
      const resolvedTools = tools === undefined ? [] : yield* resolveTools(tools)
      const upstream: UpstreamChatRequest = {
        ...options,
        model: model ?? config.openai.model,
        temperature: options.temperature ?? config.openai.temperature,
        ...(options.max_tokens === undefined && options.max_completion_tokens === undefined
          ? { max_tokens: config.openai.maxTokens }
          : {}),
        // OpenAI rejects an empty tools array; an empty selection means no tools.
        ...(resolvedTools.length > 0 ? { tools: resolvedTools } : {})
      }
      return upstream
    })

    /**
     * Whether the loop should run these calls: only when every call names a
     * registered tool. Otherwise the calls go to the client as they are.
     */
    const runnable = (calls: ReadonlyArray<ToolCall>) =>
      Effect.forEach(calls, (call) => registry.lookup(call.function.name)).pipe(
        Effect.map((found) => calls.length > 0 && found.every(Option.isSome))
      )

    /** Runs a round's calls side by side (parallel calls are independent), keeping their order. */
    const execute = (calls: ReadonlyArray<ToolCall>, record: RequestRecord.RequestRecord | undefined) =>
      Effect.forEach(
        calls,
        (call) =>
          recordToolCall(record, call, registry.execute(call)).pipe(
            Effect.map((result): ToolExecution => ({ tool_call: call, result }))
          ),
        { concurrency: TOOL_CONCURRENCY }
      )

    /** One model call, noted in the request's record (when it has one). */
    const createChatCompletion = (upstream: UpstreamChatRequest, record: RequestRecord.RequestRecord | undefined) =>
      recordUpstreamCall(
        record,
        upstream.model,
        openai.createChatCompletion(upstream),
        (completion) => chatSummary(completion.model, completion.usage, completion.choices[0]?.finish_reason ?? null)
      )

    /** The request's record, once per request; the provider is noted in it here, where it is known. */
    const currentRecord = Effect.map(FiberRef.get(RequestRecord.current), (record) => {
      if (record !== undefined) record.provider = openai.provider
      return record
    })

    const complete = (request: ChatCompletionRequest) =>
      Effect.gen(function*() {
        const record = yield* currentRecord
        let upstream = yield* resolve(request)
        if (request.auto_execute_tools !== true) return yield* createChatCompletion(upstream, record)

        const maxRounds = request.max_tool_rounds ?? DEFAULT_MAX_TOOL_ROUNDS
        const rounds: Array<ToolRound> = []
        let usage: Usage | undefined = undefined
        while (true) {
          const completion = yield* createChatCompletion(upstream, record)
          usage = addUsage(usage, completion.usage ?? undefined)
          const choice = completion.choices[0]
          const calls = choice?.message.tool_calls ?? []
          const done = (finishReason?: string): ChatCompletionResponse => ({
            ...completion,
            ...(usage ? { usage } : {}),
            ...(finishReason && choice ? { choices: [{ ...choice, finish_reason: finishReason }] } : {}),
            ...(rounds.length > 0 ? { tool_rounds: rounds } : {})
          })
          if (choice === undefined || !(yield* runnable(calls))) return done()
          if (rounds.length >= maxRounds) return done(TOOL_ROUNDS_EXHAUSTED)
          const executions = yield* execute(calls, record)
          rounds.push({ round: rounds.length + 1, executions })
          upstream = continueWith(upstream, choice.message.content, calls, executions)
        }
      })

    /**
     * A streamed completion, pushed event by event: each chunk is accumulated
     * and handed on in the same synchronous call, so the tool loop adds no
     * per-chunk cost. With `auto_execute_tools`, a round that ends in calls to
     * registered tools runs them, pushes one `tool_execution` event per call
     * and streams the next round; the last event is always the end event.
     */
    const push = (request: ChatCompletionRequest): Push.PushStream<ChatStreamEvent, AiBaseError> => (sink) =>
      Effect.gen(function*() {
        const record = yield* currentRecord
        let upstream = yield* resolve(request)
        const auto = request.auto_execute_tools === true
        const maxRounds = request.max_tool_rounds ?? DEFAULT_MAX_TOOL_ROUNDS
        const rounds: Array<ToolRound> = []
        let usage: Usage | undefined = undefined
        while (true) {
          const accumulator = new StreamAccumulator()
          const assembled = yield* recordUpstreamCall(
            record,
            upstream.model,
            pushChatCompletion(openai, upstream)((chunk) => {
              accumulator.add(chunk)
              return sink({ _tag: "chat_completion_stream_chunk", data: chunk })
            }).pipe(Effect.map(() => accumulator.result())),
            // The chunks name the model; the request's record has it (see RequestRecord.onStreamEvent).
            (assembled) => chatSummary(null, assembled.usage, assembled.finishReason)
          )
          usage = addUsage(usage, assembled.usage)
          const end = (finishReason: string | null): ChatStreamEvent => ({
            _tag: "chat_completion_stream_end",
            data: {
              finish_reason: finishReason,
              content: assembled.content,
              ...(assembled.toolCalls.length > 0 ? { tool_calls: assembled.toolCalls } : {}),
              ...(usage ? { usage } : {}),
              ...(rounds.length > 0 ? { tool_rounds: [...rounds] } : {})
            }
          })
          if (!auto || !(yield* runnable(assembled.toolCalls))) return yield* awaitSink(sink(end(assembled.finishReason)))
          if (rounds.length >= maxRounds) return yield* awaitSink(sink(end(TOOL_ROUNDS_EXHAUSTED)))
          const executions = yield* execute(assembled.toolCalls, record)
          for (const execution of executions) yield* awaitSink(sink({ _tag: "tool_execution", data: execution }))
          rounds.push({ round: rounds.length + 1, executions })
          upstream = continueWith(upstream, assembled.content || null, assembled.toolCalls, executions)
        }
      })

    const stream = (request: ChatCompletionRequest): Stream.Stream<ChatStreamEvent, AiBaseError> =>
      Push.toStream(push(request))

    return Chat.of({ complete, stream, push })
  })

  static readonly layer: Layer.Layer<Chat, never, AppConfig | OpenAi | ToolRegistry> = Layer.effect(Chat, Chat.make)
}

/** What a successful model call tells about itself. */
interface CallSummary {
  readonly responseModel: string | null
  readonly inputTokens: number | null
  readonly outputTokens: number | null
  readonly finishReason: string | null
}

/** A chat call's summary from its usage (absent when the provider sent none). */
const chatSummary = (responseModel: string | null, usage: Usage | null | undefined, finishReason: string | null): CallSummary => ({
  responseModel,
  inputTokens: usage?.prompt_tokens ?? null,
  outputTokens: usage?.completion_tokens ?? null,
  finishReason
})

/** The error code of a failed call (`cancelled`, `client_disconnected`... when interrupted), or null. */
const errorOf = (exit: Exit.Exit<unknown, unknown>): string | null =>
  Exit.isSuccess(exit) ? null : RequestRecord.outcomeOf(exit).code

/**
 * Notes a model call in the record when it ends, however it ends (also when
 * interrupted): once per call, nothing per chunk, nothing without a record.
 */
export const recordUpstreamCall = <A, E, R>(
  record: RequestRecord.RequestRecord | undefined,
  model: string,
  call: Effect.Effect<A, E, R>,
  summary: (value: A) => CallSummary
): Effect.Effect<A, E, R> =>
  record === undefined ? call : Effect.suspend(() => {
    const startHr = performance.now()
    return Effect.onExit(call, (exit) =>
      Effect.sync(() => {
        const endHr = performance.now()
        const result = Exit.isSuccess(exit) ? summary(exit.value) : undefined
        record.addUpstreamCall({
          model,
          startHr,
          endHr,
          error: errorOf(exit),
          responseModel: result?.responseModel ?? null,
          inputTokens: result?.inputTokens ?? null,
          outputTokens: result?.outputTokens ?? null,
          finishReason: result?.finishReason ?? null
        })
      }))
  })

/** Notes a tool execution in the record when it ends (see `recordUpstreamCall`). */
export const recordToolCall = <E, R>(
  record: RequestRecord.RequestRecord | undefined,
  call: ToolCall,
  execution: Effect.Effect<ToolResult, E, R>
): Effect.Effect<ToolResult, E, R> =>
  record === undefined ? execution : Effect.suspend(() => {
    const startHr = performance.now()
    return Effect.onExit(execution, (exit) =>
      Effect.sync(() =>
        record.addToolCall({
          name: call.function.name,
          callId: call.id === "" ? null : call.id,
          startHr,
          endHr: performance.now(),
          error: Exit.isSuccess(exit) ? (exit.value.is_error ? "tool_error" : null) : errorOf(exit)
        })
      ))
  })

/** Waits when the sink asked for it. */
const awaitSink = (wait: Promise<void> | undefined): Effect.Effect<void> =>
  wait === undefined ? Effect.void : Effect.promise(() => wait)

const toFunctionTool = (definition: { readonly name: string; readonly description?: string; readonly parameters?: { readonly [key: string]: unknown } }): FunctionTool => ({
  type: "function",
  function: definition
})

/** The conversation after a tool round: the assistant's calls, then each result. */
const continueWith = (
  request: UpstreamChatRequest,
  content: string | null,
  calls: ReadonlyArray<ToolCall>,
  executions: ReadonlyArray<ToolExecution>
): UpstreamChatRequest => {
  const assistant: AssistantMessage = { role: "assistant", content, tool_calls: [...calls] }
  const results = executions.map(({ result }): ToolMessage => ({
    role: "tool",
    tool_call_id: result.tool_call_id,
    content: result.content
  }))
  const messages: Array<ChatMessage> = [...request.messages, assistant, ...results]
  return { ...request, messages }
}
