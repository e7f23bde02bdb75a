/** The built-in offline model: a deterministic, network-free `OpenAi` that serves `npm start` without a key and doubles as the test model. */
import { Clock, Duration, Effect, Layer, Ref, Stream } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import type { ChatCompletion, ChatCompletionChunk, ChatMessage, UpstreamChatRequest, Usage } from "../protocol/Chat.js"
import type { EmbeddingResponse, UpstreamEmbeddingRequest } from "../protocol/Embedding.js"
import {
  type AiBaseError,
  AuthenticationError,
  CancelledError,
  type ErrorCategory,
  InternalError,
  NotFoundError,
  OverloadedError,
  PermissionError,
  RateLimitError,
  TimeoutError,
  UnavailableError,
  UpstreamError,
  ValidationError
} from "../protocol/Errors.js"
import type { ToolCall } from "../protocol/Tools.js"
import { mulberry32 } from "../util/Prng.js"
import { OpenAi } from "./OpenAi.js"

// ---------------------------------------------------------------------------
// reading requests

type Content = ChatMessage["content"]

/** The text of a message's content: the string itself, or its text parts joined. */
const textOf = (content: Content): string => {
  if (typeof content === "string") return content
  if (content == null) return ""
  const texts: Array<string> = []
  for (const part of content) {
    if (part.type === "text") texts.push(part.text)
  }
  return texts.join(" ")
}

const lastUserText = (messages: ReadonlyArray<ChatMessage>): string | undefined => {
  for (let i = messages.length - 1; i >= 0; i--) {
    const message = messages[i]
    if (message?.role === "user") return textOf(message.content)
  }
  return undefined
}

/** A rough token count (words and punctuation marks), good enough for usage figures. */
const countTokens = (text: string): number => (text.match(/\w+|[^\s\w]/g) ?? []).length

const promptTokens = (request: UpstreamChatRequest): number => {
  let total = 0
  for (const message of request.messages) {
    // A few tokens per message for the role and framing, like real models charge.
    total += 3 + countTokens(textOf(message.content))
    if (message.role === "assistant") {
      for (const call of message.tool_calls ?? []) total += countTokens(call.function.name + call.function.arguments)
    }
  }
  for (const tool of request.tools ?? []) total += countTokens(JSON.stringify(tool.function))
  return total
}

// ---------------------------------------------------------------------------
// deterministic failures

/**
 * A user message whose text is exactly `offline:fail:<category>` (e.g.
 * `offline:fail:rate_limit`) fails the call with that category's error, and
 * so does an embedding input of exactly that text. It gives tests of error
 * frames a deterministic failure without a real upstream. Unknown categories
 * are treated as ordinary text.
 */
const failures: Record<ErrorCategory, (fields: { message: string; code: string }) => AiBaseError> = {
  validation: (fields) => new ValidationError(fields),
  authentication: (fields) => new AuthenticationError(fields),
  permission: (fields) => new PermissionError(fields),
  not_found: (fields) => new NotFoundError(fields),
  rate_limit: (fields) => new RateLimitError(fields),
  timeout: (fields) => new TimeoutError(fields),
  upstream: (fields) => new UpstreamError(fields),
  cancelled: (fields) => new CancelledError(fields),
  overloaded: (fields) => new OverloadedError(fields),
  unavailable: (fields) => new UnavailableError(fields),
  internal: (fields) => new InternalError(fields)
}

const isCategory = (name: string): name is ErrorCategory => Object.hasOwn(failures, name)

const requestedFailure = (texts: ReadonlyArray<string>): AiBaseError | undefined => {
  for (const text of texts) {
    const category = /^offline:fail:([a-z_]+)$/.exec(text)?.[1]
    if (category !== undefined && isCategory(category)) {
      return failures[category]({
        message: `The offline model failed on request (${text}).`,
        code: `offline_${category}`
      })
    }
  }
  return undefined
}

const failIfRequested = (texts: ReadonlyArray<string>): Effect.Effect<void, AiBaseError> => {
  const failure = requestedFailure(texts)
  return failure === undefined ? Effect.void : Effect.fail(failure)
}

// ---------------------------------------------------------------------------
// tool-call triggers

type ToolArguments = Record<string, string>

const DEFAULT_LOCATION = "San Francisco"
const WEATHER = /\b(?:weather|temperature|forecast)\b/i
const TIME = /\btime\b|\btime ?zone\b|\bclock\b|\bdate\b/i
const ZONE = /\b[A-Z][A-Za-z_]+(?:\/[A-Z][A-Za-z0-9_+-]+)+/
const MATH_OPERATION = /[\d)]\s*[-+*/^%]\s*[\d(]|\b(?:sqrt|abs)\s*\(/i
const MATH_REQUEST = /\b(?:calculate|compute|evaluate)\b|\bwhat(?:'s|\s+is)\s+[-\d(.]/i
// Runs of characters an arithmetic expression is made of; the best run is the expression.
const MATH_RUN = /(?:\b(?:sqrt|abs|pi)\b|\d+(?:\.\d+)?|\.\d+|[-+*/^%()]|[ \t])+/gi
// What trails a place name in a question without being part of it.
const LOCATION_TAIL = /\s+(?:right now|now|today|tonight|tomorrow|currently|this (?:morning|afternoon|evening|week|weekend))$/i

/** The place after "in" (or "for"/"at"), preferring the part of the text that follows the weather keyword. */
const locationOf = (text: string): string => {
  const keyword = WEATHER.exec(text)
  const candidates = keyword === null ? [text] : [text.slice(keyword.index), text]
  for (const candidate of candidates) {
    const match = /\bin\s+([^?!.;\n]+)/i.exec(candidate) ?? /\b(?:for|at)\s+([^?!.;\n]+)/i.exec(candidate)
    const raw = match?.[1]
    if (raw === undefined) continue
    // "Paris and what time is it…" / "Paris, please" end the place; "Paris, France" does not.
    const place = (raw.split(/,?\s+(?:and|but|or)\s+|,\s*(?=[a-z])/)[0] ?? "").trim().replace(LOCATION_TAIL, "").trim()
    if (place.length > 0) return place
  }
  return DEFAULT_LOCATION
}

/** Drops parentheses that a run picked up from the surrounding sentence. */
const balanceParentheses = (expression: string): string => {
  let result = expression.trim()
  const count = (s: string, c: string) => s.split(c).length - 1
  while (result.endsWith(")") && count(result, ")") > count(result, "(")) result = result.slice(0, -1).trim()
  while (result.startsWith("(") && count(result, "(") > count(result, ")")) result = result.slice(1).trim()
  return result
}

/** The arithmetic expression in a text, if it has one (an operation preferred over a bare number). */
const expressionOf = (text: string): string | undefined => {
  let best: string | undefined
  let bestScore = -1
  for (const run of text.match(MATH_RUN) ?? []) {
    const expression = balanceParentheses(run)
    if (!/\d|\bpi\b/i.test(expression)) continue
    const score = (/[-+*/^%]|sqrt|abs/i.test(expression.replace(/^-/, "")) ? 10_000 : 0) + expression.length
    if (score > bestScore) {
      best = expression
      bestScore = score
    }
  }
  return best
}

interface Trigger {
  readonly name: string
  /** The arguments when the text asks for this tool, else undefined. */
  readonly detect: (text: string) => ToolArguments | undefined
  /** The arguments when the tool is forced on a text that may not ask for it. */
  readonly forced: (text: string) => ToolArguments
}

const timeArguments = (text: string): ToolArguments => {
  const zone = ZONE.exec(text)?.[0]
  return zone === undefined ? {} : { timezone: zone }
}

// ISO dates look like subtractions; they are not arithmetic questions.
const withoutDates = (text: string) => text.replace(/\b\d{4}-\d{2}-\d{2}\b/g, " ")

const triggers: ReadonlyArray<Trigger> = [
  {
    name: "get_weather",
    detect: (text) => (WEATHER.test(text) ? { location: locationOf(text) } : undefined),
    forced: (text) => ({ location: locationOf(text) })
  },
  {
    name: "get_current_time",
    detect: (text) => (TIME.test(text) ? timeArguments(text) : undefined),
    forced: timeArguments
  },
  {
    name: "calculator",
    detect: (text) => {
      const clean = withoutDates(text)
      const expression = expressionOf(clean)
      return expression !== undefined && (MATH_OPERATION.test(clean) || MATH_REQUEST.test(clean))
        ? { expression }
        : undefined
    },
    forced: (text) => {
      const expression = expressionOf(withoutDates(text))
      return expression === undefined ? {} : { expression }
    }
  }
]

interface PlannedCall {
  readonly name: string
  readonly arguments: string
}

type Reply =
  | { readonly _tag: "Text"; readonly content: string }
  | { readonly _tag: "ToolCalls"; readonly calls: ReadonlyArray<PlannedCall> }

const call = (name: string, args: ToolArguments): PlannedCall => ({ name, arguments: JSON.stringify(args) })

/** The offered tools the text asks for, in a fixed order (weather, time, calculator). */
const detectCalls = (text: string, offered: ReadonlySet<string>): Array<PlannedCall> =>
  triggers.flatMap((trigger) => {
    if (!offered.has(trigger.name)) return []
    const args = trigger.detect(text)
    return args === undefined ? [] : [call(trigger.name, args)]
  })

const forcedCall = (name: string, text: string): PlannedCall =>
  call(name, triggers.find((trigger) => trigger.name === name)?.forced(text) ?? {})

const offlineText = (said: string) =>
  `[offline model] You said: "${said}". This reply comes from AIBase's built-in offline model; set OPENAI_API_KEY to use a real one.`

/** The trailing tool messages answered as text, naming each tool from the assistant turn that called it. */
const answerFromToolResults = (messages: ReadonlyArray<ChatMessage>): string | undefined => {
  let start = messages.length
  while (start > 0 && messages[start - 1]?.role === "tool") start--
  if (start === messages.length) return undefined
  const names = new Map<string, string>()
  for (let i = start - 1; i >= 0 && names.size === 0; i--) {
    const message = messages[i]
    if (message?.role === "assistant") {
      for (const toolCall of message.tool_calls ?? []) names.set(toolCall.id, toolCall.function.name)
    }
  }
  const answers: Array<string> = []
  for (const message of messages.slice(start)) {
    if (message.role === "tool") {
      answers.push(`Based on ${names.get(message.tool_call_id) ?? message.tool_call_id}: ${textOf(message.content)}`)
    }
  }
  return `[offline model] ${answers.join(" ")}`
}

/**
 * Decides the reply. A forced tool_choice (a named function or "required")
 * always calls a tool, even right after tool results, as OpenAI does; with
 * "auto" trailing tool results are answered in text, which is what ends a
 * server-side tool loop, and otherwise the last user message may trigger
 * calls of the offered tools get_weather, get_current_time and calculator.
 */
const plan = (request: UpstreamChatRequest): Reply => {
  const text = lastUserText(request.messages) ?? ""
  const tools = request.tools ?? []
  const offered = new Set(tools.map((tool) => tool.function.name))
  const choice = request.tool_choice ?? "auto"
  const limit = (calls: Array<PlannedCall>) => (request.parallel_tool_calls === false ? calls.slice(0, 1) : calls)

  if (typeof choice === "object") {
    return { _tag: "ToolCalls", calls: [forcedCall(choice.function.name, text)] }
  }
  if (choice === "required" && tools.length > 0) {
    const detected = detectCalls(text, offered)
    const first = tools[0]
    if (detected.length > 0) return { _tag: "ToolCalls", calls: limit(detected) }
    if (first !== undefined) return { _tag: "ToolCalls", calls: [call(first.function.name, {})] }
  }
  const fromResults = answerFromToolResults(request.messages)
  if (fromResults !== undefined) return { _tag: "Text", content: fromResults }
  const last = request.messages[request.messages.length - 1]
  if (choice !== "none" && last?.role === "user") {
    const detected = detectCalls(text, offered)
    if (detected.length > 0) return { _tag: "ToolCalls", calls: limit(detected) }
  }
  return { _tag: "Text", content: offlineText(text) }
}

const completionTokens = (reply: Reply): number =>
  reply._tag === "Text"
    ? countTokens(reply.content)
    : reply.calls.reduce((sum, planned) => sum + countTokens(planned.name + planned.arguments), 0)

// ---------------------------------------------------------------------------
// splitting output into stream pieces

/** Words with their separating whitespace, so that the pieces concatenate to the text. */
const words = (text: string): Array<string> => {
  const pieces = text.match(/\s*\S+\s*/g) ?? []
  return pieces.length === 0 && text.length > 0 ? [text] : pieces
}

/** Splits by code points, so that no piece ends inside a surrogate pair. */
const slices = (text: string, size: number): Array<string> => {
  const chars = Array.from(text)
  const pieces: Array<string> = []
  for (let i = 0; i < chars.length; i += size) pieces.push(chars.slice(i, i + size).join(""))
  return pieces
}

const ARGUMENT_PIECE_LENGTH = 8

// ---------------------------------------------------------------------------
// embeddings

/** FNV-1a, 32 bit. */
const fnv1a = (text: string, seed = 0x811c9dc5): number => {
  let hash = seed >>> 0
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193) >>> 0
  }
  return hash
}


/**
 * A deterministic unit-length embedding built by hashing features into the
 * vector: character trigrams and words of the normalised text (so similar
 * texts share features and get similar vectors) plus the exact text (so
 * different texts never coincide). Each feature adds ±weight at a hashed index.
 */
export const embed = (text: string, dimensions: number): Array<number> => {
  const vector = new Array<number>(dimensions).fill(0)
  const add = (feature: string, weight: number) => {
    const hash = fnv1a(feature)
    vector[hash % dimensions] = (vector[hash % dimensions] ?? 0) + (fnv1a(feature, 0x9747b28c) & 1 ? weight : -weight)
  }
  const normalised = ` ${text.toLowerCase().replace(/\s+/g, " ").trim()} `
  for (let i = 0; i + 3 <= normalised.length; i++) add(`c:${normalised.slice(i, i + 3)}`, 1)
  for (const word of normalised.match(/\w+/g) ?? []) add(`w:${word}`, 1)
  add(`t:${text}`, 0.5)

  const length = () => Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0))
  let norm = length()
  if (norm === 0) {
    // Features can cancel out in very small dimensions: fall back to a seeded random direction.
    const random = mulberry32(fnv1a(text))
    for (let i = 0; i < dimensions; i++) vector[i] = random() * 2 - 1
    norm = length()
  }
  if (norm === 0) {
    vector[0] = 1
    norm = 1
  }
  return vector.map((x) => x / norm)
}

// ---------------------------------------------------------------------------
// the service

export const make = Effect.gen(function*() {
  const config = yield* AppConfig
  const completions = yield* Ref.make(0)
  const toolCalls = yield* Ref.make(0)
  const wordDelay = config.offline.wordDelay

  /** Checks the failure trigger, then plans the reply and gives it ids and a timestamp. */
  const respond = Effect.fnUntraced(function*(request: UpstreamChatRequest) {
    const userTexts = request.messages.flatMap((message) => (message.role === "user" ? [textOf(message.content)] : []))
    yield* failIfRequested(userTexts)
    const reply = plan(request)
    const id = `chatcmpl-offline-${yield* Ref.updateAndGet(completions, (n) => n + 1)}`
    const created = Math.floor((yield* Clock.currentTimeMillis) / 1000)
    const calls: Array<ToolCall> = []
    if (reply._tag === "ToolCalls") {
      for (const planned of reply.calls) {
        const n = yield* Ref.updateAndGet(toolCalls, (k) => k + 1)
        calls.push({ id: `call_offline_${n}`, type: "function", function: { name: planned.name, arguments: planned.arguments } })
      }
    }
    const prompt = promptTokens(request)
    const completion = completionTokens(reply)
    const usage: Usage = { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
    return { reply, id, created, calls, usage }
  })

  const createChatCompletion = Effect.fnUntraced(
    function*(request: UpstreamChatRequest) {
      const { calls, created, id, reply, usage } = yield* respond(request)
      const completion: ChatCompletion = {
        id,
        object: "chat.completion",
        created,
        model: request.model,
        choices: [{
          index: 0,
          message: reply._tag === "Text"
            ? { role: "assistant", content: reply.content, refusal: null }
            : { role: "assistant", content: null, refusal: null, tool_calls: calls },
          finish_reason: reply._tag === "Text" ? "stop" : "tool_calls",
          logprobs: null
        }],
        usage
      }
      return completion
    }
  )

  // Sleeping only between pieces (and not at all with a zero delay) keeps
  // delay-0 streams synchronous; Effect.sleep makes every gap interruptible.
  const paced = <A>(pieces: ReadonlyArray<A>): Stream.Stream<A> =>
    Duration.isZero(wordDelay)
      ? Stream.fromIterable(pieces)
      : Stream.fromIterable(pieces).pipe(
        Stream.zipWithIndex,
        Stream.mapEffect(([piece, index]) => (index === 0 ? Effect.succeed(piece) : Effect.as(Effect.sleep(wordDelay), piece)))
      )

  const streamChatCompletion = (request: UpstreamChatRequest): Stream.Stream<ChatCompletionChunk, AiBaseError> =>
    Stream.unwrap(Effect.map(respond(request), ({ calls, created, id, reply, usage }) => {
      type Delta = ChatCompletionChunk["choices"][number]["delta"]
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
        return Stream.make(chunk({ role: "assistant", content: "" })).pipe(
          Stream.concat(paced(words(reply.content)).pipe(Stream.map((word) => chunk({ content: word })))),
          Stream.concat(Stream.make(chunk({}, "stop"), usageChunk))
        )
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
      return paced(deltas).pipe(
        Stream.map((delta) => chunk(delta)),
        Stream.concat(Stream.make(chunk({}, "tool_calls"), usageChunk))
      )
    }))

  const createEmbedding = Effect.fnUntraced(
    function*(request: UpstreamEmbeddingRequest) {
      const inputs = typeof request.input === "string" ? [request.input] : request.input
      yield* failIfRequested(inputs)
      const dimensions = request.dimensions ?? config.offline.embeddingDimensions
      const tokens = inputs.reduce((sum, input) => sum + countTokens(input), 0)
      const response: EmbeddingResponse = {
        object: "list",
        data: inputs.map((input, index) => ({ object: "embedding", index, embedding: embed(input, dimensions) })),
        model: request.model,
        usage: { prompt_tokens: tokens, total_tokens: tokens }
      }
      return response
    }
  )

  return OpenAi.of({
    provider: "offline",
    baseUrl: undefined,
    createChatCompletion,
    streamChatCompletion,
    createEmbedding
  })
})

/** The offline model as the `OpenAi` service. */
export const layer: Layer.Layer<OpenAi, never, AppConfig> = Layer.effect(OpenAi, make)
