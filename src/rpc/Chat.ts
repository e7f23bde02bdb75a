/**
 * Chat completions as clients ask for them: configured defaults filled in,
 * tools named in any of the accepted shapes turned into OpenAI's, and, with
 * `auto_execute_tools`, the server-side tool loop (call the model, run the
 * registry's tools, call it again) for both whole and streamed completions.
 */
import { type ConfigError, Context, Effect, Exit, FiberRef, Layer, Option, Stream } from "effect"
import { chatDefaults } from "../config/AppConfig.js"
import type { ChatCompletion } from "../protocol/Chat.js"
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

export interface ChatOptions {
  /** The model of requests that name none (OPENAI_MODEL). */
  readonly model: string
  /** The temperature of requests that set none (OPENAI_TEMPERATURE). */
  readonly temperature?: number | undefined
  /** `max_tokens` of requests that set neither it nor `max_completion_tokens` (OPENAI_MAX_TOKENS). */
  readonly maxTokens?: number | undefined
  /** Tool rounds of requests that set no `max_tool_rounds`. Default 5. */
  readonly maxToolRounds?: number | undefined
}

export class Chat extends Context.Tag("aibase/Chat")<Chat, {
  /** The defaults filled into requests. */
  readonly defaults: ChatOptions
  readonly complete: (request: ChatCompletionRequest) => Effect.Effect<ChatCompletionResponse, AiBaseError>
  readonly stream: (request: ChatCompletionRequest) => Stream.Stream<ChatStreamEvent, AiBaseError>
  /** `stream` as a push stream: the form the /ws transport runs. */
  readonly push: (request: ChatCompletionRequest) => Push.PushStream<ChatStreamEvent, AiBaseError>
}>() {
  static readonly make = (options: ChatOptions) => Effect.gen(function*() {
    const defaults = options
    const defaultMaxToolRounds = options.maxToolRounds ?? DEFAULT_MAX_TOOL_ROUNDS
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
      const { auto_execute_tools: _auto, max_tool_rounds: _rounds, model, resumable: _resumable, tools, ...fields } = request
      const resolvedTools = tools === undefined ? [] : yield* resolveTools(tools)
      const temperature = fields.temperature ?? defaults.temperature
      const upstream: UpstreamChatRequest = {
        ...fields,
        model: model ?? defaults.model,
        ...(temperature === undefined ? {} : { temperature }),
        ...(fields.max_tokens === undefined && fields.max_completion_tokens === undefined && defaults.maxTokens !== undefined
          ? { max_tokens: defaults.maxTokens }
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

    /**
     * The tool loop, for whole and streamed completions alike: call the
     * model (`turn`), and while it asks for registered tools (with
     * `auto_execute_tools`), run them, report them (`executed`) and call it
     * again with their results, up to `max_tool_rounds`; then `finish`.
     */
    const toolLoop = <A, B>(
      request: ChatCompletionRequest,
      turn: (upstream: UpstreamChatRequest, record: RequestRecord.RequestRecord | undefined) => Effect.Effect<Turn<A>, AiBaseError>,
      executed: (executions: ReadonlyArray<ToolExecution>) => Effect.Effect<void, AiBaseError>,
      finish: (value: A, ending: Ending) => Effect.Effect<B, AiBaseError>
    ) =>
      Effect.gen(function*() {
        const record = yield* currentRecord
        let upstream = yield* resolve(request)
        const auto = request.auto_execute_tools === true
        const maxRounds = request.max_tool_rounds ?? defaultMaxToolRounds
        const rounds: Array<ToolRound> = []
        let usage: Usage | undefined = undefined
        while (true) {
          const { content, toolCalls, usage: used, value } = yield* turn(upstream, record)
          usage = addUsage(usage, used)
          const ending = (finishReason: string | undefined): Ending => ({ usage, rounds: [...rounds], finishReason })
          if (!auto || !(yield* runnable(toolCalls))) return yield* finish(value, ending(undefined))
          if (rounds.length >= maxRounds) return yield* finish(value, ending(TOOL_ROUNDS_EXHAUSTED))
          const executions = yield* execute(toolCalls, record)
          yield* executed(executions)
          rounds.push({ round: rounds.length + 1, executions })
          upstream = continueWith(upstream, content, toolCalls, executions)
        }
      })

    const complete = (request: ChatCompletionRequest): Effect.Effect<ChatCompletionResponse, AiBaseError> =>
      toolLoop(
        request,
        (upstream, record) =>
          Effect.map(createChatCompletion(upstream, record), (completion): Turn<ChatCompletion> => {
            const message = completion.choices[0]?.message
            return {
              value: completion,
              content: message?.content ?? null,
              toolCalls: message?.tool_calls ?? [],
              usage: completion.usage ?? undefined
            }
          }),
        () => Effect.void,
        (completion, { finishReason, rounds, usage }) => {
          const choice = completion.choices[0]
          return Effect.succeed({
            ...completion,
            ...(usage ? { usage } : {}),
            ...(finishReason !== undefined && choice ? { choices: [{ ...choice, finish_reason: finishReason }] } : {}),
            ...(rounds.length > 0 ? { tool_rounds: rounds } : {})
          })
        }
      )

    /**
     * A streamed completion, pushed event by event: each chunk is accumulated
     * and handed on in the same synchronous call, so the tool loop adds no
     * per-chunk cost. Each tool call gets a `tool_execution` event; the last
     * event is always the end event.
     */
    const push = (request: ChatCompletionRequest): Push.PushStream<ChatStreamEvent, AiBaseError> => (sink) =>
      toolLoop(
        request,
        (upstream, record) => {
          const accumulator = new StreamAccumulator()
          return recordUpstreamCall(
            record,
            upstream.model,
            pushChatCompletion(openai, upstream)((chunk, json) => {
              accumulator.add(chunk)
              return sink({ _tag: "chat_completion_stream_chunk", data: chunk }, json)
            }).pipe(Effect.map((): Turn<Assembled> => {
              const assembled = accumulator.result()
              return { value: assembled, content: assembled.content || null, toolCalls: assembled.toolCalls, usage: assembled.usage }
            })),
            // The chunks name the model; the request's record has it (see RequestRecord.onStreamEvent).
            (turn) => chatSummary(null, turn.usage, turn.value.finishReason)
          )
        },
        (executions) => Effect.forEach(executions, (execution) => awaitSink(sink({ _tag: "tool_execution", data: execution })), { discard: true }),
        (assembled, { finishReason, rounds, usage }) =>
          awaitSink(sink({
            _tag: "chat_completion_stream_end",
            data: {
              finish_reason: finishReason ?? assembled.finishReason,
              content: assembled.content,
              ...(assembled.toolCalls.length > 0 ? { tool_calls: assembled.toolCalls } : {}),
              ...(usage ? { usage } : {}),
              ...(rounds.length > 0 ? { tool_rounds: rounds } : {})
            }
          }))
      )

    const stream = (request: ChatCompletionRequest): Stream.Stream<ChatStreamEvent, AiBaseError> =>
      Push.toStream(push(request))

    return Chat.of({ defaults, complete, stream, push })
  })

  static readonly layer = (options: ChatOptions): Layer.Layer<Chat, never, OpenAi | ToolRegistry> =>
    Layer.effect(Chat, Chat.make(options))

  /** OPENAI_MODEL, OPENAI_TEMPERATURE and OPENAI_MAX_TOKENS. */
  static readonly layerConfig: Layer.Layer<Chat, ConfigError.ConfigError, OpenAi | ToolRegistry> = Layer.unwrapEffect(
    Effect.map(chatDefaults, Chat.layer)
  )
}

/** One model call, as the tool loop sees it. */
interface Turn<A> {
  /** What the call returned (a completion, or a stream's assembled result). */
  readonly value: A
  readonly content: string | null
  readonly toolCalls: ReadonlyArray<ToolCall>
  readonly usage: Usage | undefined
}

/** How the loop ended: the usage of all its calls, its rounds, and the finish reason it imposes (if any). */
interface Ending {
  readonly usage: Usage | undefined
  readonly rounds: ReadonlyArray<ToolRound>
  readonly finishReason: string | undefined
}

type Assembled = ReturnType<StreamAccumulator["result"]>

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
