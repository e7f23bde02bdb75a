/**
 * The offline model's text: reading the text of a request's messages,
 * counting tokens for usage figures, the replies it writes, and splitting
 * output into stream pieces.
 */
import type { ChatMessage, UpstreamChatRequest } from "../../protocol/Chat.js"

type Content = ChatMessage["content"]

/** The text of a message's content: the string itself, or its text parts joined. */
export const textOf = (content: Content): string => {
  if (typeof content === "string") return content
  if (content == null) return ""
  const texts: Array<string> = []
  for (const part of content) {
    if (part.type === "text") texts.push(part.text)
  }
  return texts.join(" ")
}

export const lastUserText = (messages: ReadonlyArray<ChatMessage>): string | undefined => {
  for (let i = messages.length - 1; i >= 0; i--) {
    const message = messages[i]
    if (message?.role === "user") return textOf(message.content)
  }
  return undefined
}

/** The text of every user message, in order. */
export const userTexts = (messages: ReadonlyArray<ChatMessage>): Array<string> =>
  messages.flatMap((message) => (message.role === "user" ? [textOf(message.content)] : []))

/** A rough token count (words and punctuation marks), good enough for usage figures. */
export const countTokens = (text: string): number => (text.match(/\w+|[^\s\w]/g) ?? []).length

export const promptTokens = (request: UpstreamChatRequest): number => {
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

/** The reply to a text that asks for no tool. */
export const offlineText = (said: string): string =>
  `[offline model] You said: "${said}". This reply comes from AIBase's built-in offline model; set OPENAI_API_KEY to use a real one.`

/** The trailing tool messages answered as text, naming each tool from the assistant turn that called it. */
export const answerFromToolResults = (messages: ReadonlyArray<ChatMessage>): string | undefined => {
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

/** Words with their separating whitespace, so that the pieces concatenate to the text. */
export const words = (text: string): Array<string> => {
  const pieces = text.match(/\s*\S+\s*/g) ?? []
  return pieces.length === 0 && text.length > 0 ? [text] : pieces
}

/** Splits by code points, so that no piece ends inside a surrogate pair. */
export const slices = (text: string, size: number): Array<string> => {
  const chars = Array.from(text)
  const pieces: Array<string> = []
  for (let i = 0; i < chars.length; i += size) pieces.push(chars.slice(i, i + size).join(""))
  return pieces
}
