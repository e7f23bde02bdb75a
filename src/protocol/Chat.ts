/**
 * Chat completion shapes: what clients send, what goes upstream, and what
 * comes back (whole completions, stream chunks and the stream's end).
 *
 * Request shapes mirror OpenAI's Chat Completions API closely enough that the
 * decoded values are accepted by the openai SDK's own parameter types, so the
 * compiler checks the two against each other.
 */
import { Schema } from "effect"
import { optional } from "./Fields.js"
import { isRecord, onlyKeys } from "./Guards.js"
import { FunctionTool, ToolCall, ToolDefinition, ToolRound } from "./Tools.js"

const mutableArray = <S extends Schema.Schema.Any>(item: S) => Schema.mutable(Schema.Array(item))

// ---------------------------------------------------------------------------
// messages

export const TextPart = Schema.Struct({ type: Schema.Literal("text"), text: Schema.String })

export const ImagePart = Schema.Struct({
  type: Schema.Literal("image_url"),
  image_url: Schema.Struct({
    url: Schema.String,
    detail: optional(Schema.Literal("auto", "low", "high"))
  })
})

export const AudioPart = Schema.Struct({
  type: Schema.Literal("input_audio"),
  input_audio: Schema.Struct({ data: Schema.String, format: Schema.Literal("wav", "mp3") })
})

export const FilePart = Schema.Struct({
  type: Schema.Literal("file"),
  file: Schema.Struct({
    file_data: optional(Schema.String),
    file_id: optional(Schema.String),
    filename: optional(Schema.String)
  })
})

export const RefusalPart = Schema.Struct({ type: Schema.Literal("refusal"), refusal: Schema.String })

const TextContent = Schema.Union(Schema.String, mutableArray(TextPart))

export const SystemMessage = Schema.Struct({
  role: Schema.Literal("system"),
  content: TextContent,
  name: optional(Schema.String)
})

export const DeveloperMessage = Schema.Struct({
  role: Schema.Literal("developer"),
  content: TextContent,
  name: optional(Schema.String)
})

export const UserMessage = Schema.Struct({
  role: Schema.Literal("user"),
  content: Schema.Union(Schema.String, mutableArray(Schema.Union(TextPart, ImagePart, AudioPart, FilePart))),
  name: optional(Schema.String)
})

export const AssistantMessage = Schema.Struct({
  role: Schema.Literal("assistant"),
  content: optional(Schema.NullOr(Schema.Union(Schema.String, mutableArray(Schema.Union(TextPart, RefusalPart))))),
  name: optional(Schema.String),
  refusal: optional(Schema.NullOr(Schema.String)),
  tool_calls: optional(mutableArray(ToolCall))
})
export type AssistantMessage = typeof AssistantMessage.Type

export const ToolMessage = Schema.Struct({
  role: Schema.Literal("tool"),
  content: TextContent,
  tool_call_id: Schema.String
})
export type ToolMessage = typeof ToolMessage.Type

export const ChatMessage = Schema.Union(SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage)
export type ChatMessage = typeof ChatMessage.Type

// ---------------------------------------------------------------------------
// request options

export const ToolChoice = Schema.Union(
  Schema.Literal("none", "auto", "required"),
  Schema.Struct({ type: Schema.Literal("function"), function: Schema.Struct({ name: Schema.String }) })
)

export const ResponseFormat = Schema.Union(
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    json_schema: Schema.Struct({
      name: Schema.String,
      description: optional(Schema.String),
      schema: optional(Schema.Record({ key: Schema.String, value: Schema.Unknown })),
      strict: optional(Schema.NullOr(Schema.Boolean))
    })
  })
)

const PositiveInt = Schema.Int.pipe(Schema.positive())
const Penalty = Schema.Number.pipe(Schema.between(-2, 2))

/** Sampling and output options, forwarded upstream as given. */
const optionFields = {
  max_tokens: optional(PositiveInt),
  max_completion_tokens: optional(PositiveInt),
  temperature: optional(Schema.Number.pipe(Schema.between(0, 2))),
  top_p: optional(Schema.Number.pipe(Schema.between(0, 1))),
  stop: optional(Schema.NullOr(Schema.Union(Schema.String, mutableArray(Schema.String).pipe(Schema.maxItems(4))))),
  presence_penalty: optional(Penalty),
  frequency_penalty: optional(Penalty),
  seed: optional(Schema.Int),
  user: optional(Schema.String),
  response_format: optional(ResponseFormat),
  tool_choice: optional(ToolChoice),
  parallel_tool_calls: optional(Schema.Boolean)
}

/**
 * How a client names the tools a model may call: `"registry"` for every
 * registered tool, or a list whose entries are a registered tool's name, the
 * seed's flat `{name, description, parameters}` or OpenAI's
 * `{type: "function", function: {...}}`.
 */
export const ToolsSelection = Schema.Union(
  Schema.Literal("registry"),
  Schema.Array(Schema.Union(Schema.String, FunctionTool, ToolDefinition)).pipe(Schema.maxItems(128))
)
export type ToolsSelection = typeof ToolsSelection.Type

/** The payload of `chat_completion` and `chat_completion_stream`. */
export const ChatCompletionRequest = Schema.Struct({
  messages: mutableArray(ChatMessage).pipe(Schema.minItems(1)),
  model: optional(Schema.String.pipe(Schema.minLength(1))),
  ...optionFields,
  tools: optional(ToolsSelection),
  /** Run the registry's tools on the server and call the model again. */
  auto_execute_tools: optional(Schema.Boolean),
  /** Upper bound on model calls that ask for tools, with auto_execute_tools. */
  max_tool_rounds: optional(Schema.Int.pipe(Schema.between(1, 20))),
  /** (Streams) keep the stream running and stored so that it can be resumed after a dropped connection. */
  resumable: optional(Schema.Boolean)
})
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

/** A fully resolved request, in OpenAI's shape, as a model layer receives it. */
export const UpstreamChatRequest = Schema.Struct({
  model: Schema.String,
  messages: mutableArray(ChatMessage),
  ...optionFields,
  tools: optional(mutableArray(FunctionTool))
})
export type UpstreamChatRequest = typeof UpstreamChatRequest.Type

// ---------------------------------------------------------------------------
// responses

export const Usage = Schema.Struct({
  prompt_tokens: Schema.Number,
  completion_tokens: Schema.Number,
  total_tokens: Schema.Number,
  prompt_tokens_details: optional(Schema.NullOr(Schema.Unknown)),
  completion_tokens_details: optional(Schema.NullOr(Schema.Unknown))
})
export type Usage = typeof Usage.Type

const optionalNullableString = optional(Schema.NullOr(Schema.String))

export const ResponseMessage = Schema.Struct({
  role: Schema.Literal("assistant"),
  // Some OpenAI-compatible servers leave content out when the model only calls tools.
  content: Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null }),
  refusal: optionalNullableString,
  tool_calls: optional(Schema.Array(ToolCall))
})
export type ResponseMessage = typeof ResponseMessage.Type

export const ChatCompletionChoice = Schema.Struct({
  index: Schema.Int,
  message: ResponseMessage,
  finish_reason: Schema.NullOr(Schema.String),
  logprobs: optional(Schema.NullOr(Schema.Unknown))
})

/** OpenAI's ChatCompletion object. */
export const ChatCompletion = Schema.Struct({
  id: Schema.String,
  object: Schema.String,
  created: Schema.Number,
  model: Schema.String,
  choices: Schema.Array(ChatCompletionChoice),
  usage: optional(Schema.NullOr(Usage)),
  system_fingerprint: optionalNullableString,
  service_tier: optionalNullableString
})
export type ChatCompletion = typeof ChatCompletion.Type

/** `chat_completion_response` data: the completion, plus the server tool loop's rounds. */
export const ChatCompletionResponse = Schema.Struct({
  ...ChatCompletion.fields,
  tool_rounds: optional(Schema.Array(ToolRound))
})
export type ChatCompletionResponse = typeof ChatCompletionResponse.Type

export const ToolCallDelta = Schema.Struct({
  index: Schema.Int,
  id: optional(Schema.String),
  type: optional(Schema.Literal("function")),
  function: optional(Schema.Struct({
    name: optional(Schema.String),
    arguments: optional(Schema.String)
  }))
})
export type ToolCallDelta = typeof ToolCallDelta.Type

export const ChunkChoice = Schema.Struct({
  index: Schema.Int,
  delta: Schema.Struct({
    role: optional(Schema.String),
    content: optionalNullableString,
    refusal: optionalNullableString,
    tool_calls: optional(Schema.Array(ToolCallDelta))
  }),
  finish_reason: Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null }),
  logprobs: optional(Schema.NullOr(Schema.Unknown))
})

/** OpenAI's ChatCompletionChunk object. */
export const ChatCompletionChunk = Schema.Struct({
  id: Schema.String,
  object: Schema.String,
  created: Schema.Number,
  model: Schema.String,
  choices: Schema.Array(ChunkChoice),
  usage: optional(Schema.NullOr(Usage)),
  system_fingerprint: optionalNullableString,
  service_tier: optionalNullableString
})
export type ChatCompletionChunk = typeof ChatCompletionChunk.Type

const CHUNK_KEYS: ReadonlySet<string> = new Set(Object.keys(ChatCompletionChunk.fields))
const CHOICE_KEYS: ReadonlySet<string> = new Set(Object.keys(ChunkChoice.fields))
const TEXT_DELTA_KEYS: ReadonlySet<string> = new Set(["role", "content", "refusal"])

/** An optional field that is absent, null, or a string (present-but-undefined does not decode). */
const optionalNullableStringAt = (record: { readonly [key: string]: unknown }, key: string): boolean =>
  !(key in record) || record[key] === null || typeof record[key] === "string"

/** An optional field that is absent or null. */
const absentOrNullAt = (record: { readonly [key: string]: unknown }, key: string): boolean =>
  !(key in record) || record[key] === null

/**
 * Whether a value is a text chunk in exactly the shape `ChatCompletionChunk`
 * decodes to (no defaults to fill, nothing to strip), checked by hand.
 * Almost every chunk of a stream is one, and this check costs a fraction of
 * the Schema parser's; anything else (tool call deltas, usage, unknown
 * fields, a malformed chunk) goes through the Schema, which has the last
 * word and the error messages. A property test holds the two together.
 */
export const isPlainTextChunk = (u: unknown): u is ChatCompletionChunk => {
  if (!isRecord(u) || !onlyKeys(u, CHUNK_KEYS)) return false
  if (typeof u.id !== "string" || typeof u.object !== "string" || typeof u.model !== "string") return false
  if (typeof u.created !== "number" || !absentOrNullAt(u, "usage")) return false
  if (!optionalNullableStringAt(u, "system_fingerprint") || !optionalNullableStringAt(u, "service_tier")) return false
  if (!Array.isArray(u.choices)) return false
  for (const choice of u.choices) {
    if (!isRecord(choice) || !onlyKeys(choice, CHOICE_KEYS) || !Number.isSafeInteger(choice.index)) return false
    if (choice.finish_reason !== null && typeof choice.finish_reason !== "string") return false
    if (!absentOrNullAt(choice, "logprobs")) return false
    const delta = choice.delta
    if (!isRecord(delta) || !onlyKeys(delta, TEXT_DELTA_KEYS)) return false
    if ("role" in delta && typeof delta.role !== "string") return false
    if (!optionalNullableStringAt(delta, "content") || !optionalNullableStringAt(delta, "refusal")) return false
  }
  return true
}

/** `chat_completion_stream_end` data: the stream, assembled. */
export const ChatStreamEnd = Schema.Struct({
  finish_reason: Schema.NullOr(Schema.String),
  content: Schema.String,
  tool_calls: optional(Schema.Array(ToolCall)),
  usage: optional(Usage),
  tool_rounds: optional(Schema.Array(ToolRound))
})
export type ChatStreamEnd = typeof ChatStreamEnd.Type

/** `finish_reason` when the server tool loop stopped at max_tool_rounds. */
export const TOOL_ROUNDS_EXHAUSTED = "tool_rounds_exhausted"
