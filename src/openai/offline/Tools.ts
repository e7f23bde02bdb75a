/**
 * The offline model's tool calling: which of the offered tools
 * (get_weather, get_current_time, calculator) a text asks for and with what
 * arguments, and the plan of a reply: tool calls or text, following
 * `tool_choice` and `parallel_tool_calls` as OpenAI does.
 */
import type { UpstreamChatRequest } from "../../protocol/Chat.js"
import { answerFromToolResults, countTokens, lastUserText, offlineText } from "./Text.js"

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

/** A tool call the reply makes, before it gets its id. */
export interface PlannedCall {
  readonly name: string
  /** JSON. */
  readonly arguments: string
}

/** What the model answers: text, or calls of offered tools. */
export type Reply =
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

/**
 * Decides the reply. A forced tool_choice (a named function or "required")
 * always calls a tool, even right after tool results, as OpenAI does; with
 * "auto" trailing tool results are answered in text, which is what ends a
 * server-side tool loop, and otherwise the last user message may trigger
 * calls of the offered tools get_weather, get_current_time and calculator.
 */
export const plan = (request: UpstreamChatRequest): Reply => {
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

/** The reply's usage figure. */
export const completionTokens = (reply: Reply): number =>
  reply._tag === "Text"
    ? countTokens(reply.content)
    : reply.calls.reduce((sum, planned) => sum + countTokens(planned.name + planned.arguments), 0)
