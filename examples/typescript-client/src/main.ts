/**
 * A browser chat client for AIBase's /ws protocol: streamed replies, tool
 * calls as they happen, cancel, and reconnects with backoff. Replies are
 * resumable streams: a reply cut by a dropped connection is resumed on the
 * next one, after the last frame (`seq`) the page has.
 *
 * The frame types come from the server's own protocol module. They are
 * imported with `import type`, which the build erases: nothing from the
 * server runs in the browser.
 */
import type { ClientFrame, ServerFrame } from "../../../src/protocol/Frames.js"

type StreamRequest = Extract<ClientFrame, { readonly type: "chat_completion_stream" }>
type Message = NonNullable<StreamRequest["payload"]>["messages"][number]
type DataOf<T extends ServerFrame["type"]> = Extract<ServerFrame, { readonly type: T }>["data"]

// ---------------------------------------------------------------------------
// configuration: ?server=ws://host:port/ws, ?token=... and ?dropAfter=N

const params = new URLSearchParams(location.search)

/** A demo (and test) of resuming: drop the connection after this many text chunks of each reply. */
const dropAfterParam = Number(params.get("dropAfter"))
const dropAfter = Number.isInteger(dropAfterParam) && dropAfterParam > 0 ? dropAfterParam : undefined

/** Reconnections a reply waits through before it is given up as interrupted. */
const RESUME_ATTEMPTS = 5

const serverUrl = (): string => {
  const url = new URL(params.get("server") ?? `ws://${location.hostname || "localhost"}:8080/ws`, location.href)
  url.protocol = url.protocol.replace(/^http/, "ws")
  const token = params.get("token")
  if (token !== null) url.searchParams.set("token", token)
  return url.href
}

// ---------------------------------------------------------------------------
// the page

const element = <T extends HTMLElement>(id: string, type: { new(): T }): T => {
  const found = document.getElementById(id)
  if (!(found instanceof type)) throw new Error(`index.html has no #${id}`)
  return found
}

const messages = element("messages", HTMLElement)
const form = element("composer", HTMLFormElement)
const input = element("input", HTMLTextAreaElement)
const sendButton = element("send", HTMLButtonElement)
const cancelButton = element("cancel", HTMLButtonElement)
const status = element("status", HTMLElement)

const make = <K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] => {
  const node = document.createElement(tag)
  node.className = className
  if (text !== undefined) node.textContent = text
  return node
}

/** Keeps the newest message in view unless the user has scrolled up to read. */
const reveal = (update: () => void): void => {
  const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 48
  update()
  if (atBottom) messages.scrollTop = messages.scrollHeight
}

const addBubble = (role: "user" | "assistant" | "notice", text?: string): HTMLElement => {
  const bubble = make("article", "msg")
  bubble.dataset.role = role
  bubble.append(make("div", "who", role === "user" ? "You" : role === "assistant" ? "Assistant" : "Notice"))
  const body = make("div", "body", text)
  bubble.append(body)
  reveal(() => messages.append(bubble))
  return bubble
}

// ---------------------------------------------------------------------------
// conversation state

/** One streamed reply: its request, its bubble and what has arrived so far. */
interface Turn {
  /** The request frames arrive under: the chat_completion_stream, then each resume of it. */
  id: string
  /** From chat_completion_stream_start: what a resume asks for. */
  streamId: string | undefined
  /** The seq of the last frame shown: a resume asks for the frames after it. */
  lastSeq: number
  /** Text chunks shown, for ?dropAfter. */
  chunks: number
  /** Says that the reply was resumed, once it has been. */
  resumeNote: HTMLElement | undefined
  readonly bubble: HTMLElement
  readonly body: HTMLElement
  /** The text segment being written; a tool call starts a new one after it. */
  text: HTMLElement | undefined
  content: string
  /** This round's tool calls by their delta index, and every call of the turn. */
  readonly round: Map<number, ToolView>
  readonly tools: Array<ToolView>
}

interface ToolView {
  readonly root: HTMLElement
  readonly name: HTMLElement
  readonly args: HTMLElement
  readonly result: HTMLElement
}

const history: Array<Message> = []
let socket: WebSocket | undefined
let connected = false
let active: Turn | undefined
let attempt = 0
let retryTimer: number | undefined
let counter = 0

const nextId = (prefix: string): string => `${prefix}-${Date.now().toString(36)}-${++counter}`

const setStatus = (state: "connecting" | "connected" | "disconnected", text: string): void => {
  status.dataset.state = state
  status.textContent = text
}

const updateControls = (): void => {
  sendButton.disabled = !connected || active !== undefined
  cancelButton.disabled = !connected || active === undefined
}

const write = (frame: ClientFrame): void => socket?.send(JSON.stringify(frame))

// ---------------------------------------------------------------------------
// rendering a streamed reply

const appendText = (turn: Turn, text: string): void => {
  turn.content += text
  reveal(() => {
    if (turn.text === undefined) {
      turn.text = make("p", "text")
      turn.text.dataset.testid = "assistant-text"
      turn.body.append(turn.text)
    }
    turn.text.append(text)
  })
}

const addTool = (turn: Turn): ToolView => {
  const view: ToolView = {
    root: make("div", "tool"),
    name: make("span", "tool-name"),
    args: make("code", "tool-args"),
    result: make("span", "tool-result")
  }
  view.root.dataset.testid = "tool-call"
  view.root.dataset.state = "running"
  const icon = make("span", "tool-icon", "🔧")
  icon.setAttribute("aria-label", "Tool call:")
  view.root.append(icon, view.name, " ", view.args, make("span", "tool-arrow", " → "), view.result)
  turn.tools.push(view)
  turn.text = undefined
  reveal(() => turn.body.append(view.root))
  return view
}

const onChunk = (turn: Turn, chunk: DataOf<"chat_completion_stream_chunk">): void => {
  const delta = chunk.choices[0]?.delta
  if (delta === undefined) return
  if (typeof delta.content === "string" && delta.content !== "") {
    appendText(turn, delta.content)
    if (++turn.chunks === dropAfter) dropConnection()
  }
  for (const call of delta.tool_calls ?? []) {
    let view = turn.round.get(call.index)
    if (view === undefined) {
      view = addTool(turn)
      turn.round.set(call.index, view)
    }
    if (call.id !== undefined) view.root.dataset.callId = call.id
    if (call.function?.name !== undefined) view.name.append(call.function.name)
    if (call.function?.arguments !== undefined) view.args.append(call.function.arguments)
  }
}

const onToolExecution = (turn: Turn, execution: DataOf<"tool_execution">): void => {
  const { tool_call: call, result } = execution
  const view = turn.tools.find((tool) => tool.root.dataset.callId === call.id) ?? addTool(turn)
  view.root.dataset.callId = call.id
  view.root.dataset.state = result.is_error ? "error" : "done"
  view.name.textContent = call.function.name
  view.args.textContent = call.function.arguments
  reveal(() => (view.result.textContent = result.content))
  // The next model round numbers its tool calls from 0 again.
  turn.round.clear()
}

const finish = (turn: Turn, state: "done" | "cancelled" | "error", note?: string): void => {
  turn.bubble.dataset.state = state
  turn.bubble.removeAttribute("aria-busy")
  if (note !== undefined) {
    const line = make("p", "note", note)
    line.dataset.testid = "note"
    reveal(() => turn.bubble.append(line))
  }
  if (state !== "done" && turn.content !== "") history.push({ role: "assistant", content: turn.content })
  active = undefined
  updateControls()
}

const onFrame = (frame: ServerFrame): void => {
  const turn = active !== undefined && frame.request_id === active.id ? active : undefined
  if (turn !== undefined && "seq" in frame && frame.seq !== undefined) {
    // Frames keep their seq across a resume: one at or before the last shown is a repeat.
    if (frame.seq <= turn.lastSeq) return
    turn.lastSeq = frame.seq
  }
  switch (frame.type) {
    case "chat_completion_stream_start":
      if (turn !== undefined) turn.streamId = frame.data.stream_id
      return
    case "chat_completion_stream_chunk":
      if (turn !== undefined) onChunk(turn, frame.data)
      return
    case "tool_execution":
      if (turn !== undefined) onToolExecution(turn, frame.data)
      return
    case "chat_completion_stream_end":
      if (turn === undefined) return
      history.push({ role: "assistant", content: frame.data.content })
      if (turn.content === "" && turn.tools.length === 0) appendText(turn, frame.data.content || "(empty reply)")
      finish(turn, "done")
      return
    case "error":
      if (turn === undefined) addBubble("notice", `Server error: ${frame.error}`).dataset.state = "error"
      else if (frame.data.category === "cancelled") finish(turn, "cancelled", "Cancelled.")
      else finish(turn, "error", `Error (${frame.data.category}): ${frame.error}`)
      return
    default:
      return // cancel_response and answers to requests this page does not send
  }
}

// ---------------------------------------------------------------------------
// sending and cancelling

const send = (): void => {
  const text = input.value.trim()
  if (text === "" || !connected || active !== undefined) return
  history.push({ role: "user", content: text })
  const id = nextId("chat")
  write({
    type: "chat_completion_stream",
    request_id: id,
    payload: { messages: [...history], tools: "registry", auto_execute_tools: true, resumable: true }
  })
  addBubble("user", text)
  const bubble = addBubble("assistant")
  bubble.dataset.state = "streaming"
  bubble.setAttribute("aria-busy", "true")
  const body = bubble.querySelector<HTMLElement>(".body") ?? bubble
  active = {
    id,
    streamId: undefined,
    lastSeq: 0,
    chunks: 0,
    resumeNote: undefined,
    bubble,
    body,
    text: undefined,
    content: "",
    round: new Map(),
    tools: []
  }
  input.value = ""
  input.focus()
  updateControls()
}

const cancel = (): void => {
  if (active === undefined) return
  write({ type: "cancel", request_id: nextId("cancel"), payload: { request_id: active.id } })
  cancelButton.disabled = true
}

form.addEventListener("submit", (event) => {
  event.preventDefault()
  send()
})
input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault()
    send()
  }
})
cancelButton.addEventListener("click", cancel)

// ---------------------------------------------------------------------------
// resuming a reply after the connection dropped

/** Asks, on the new connection, for the rest of the reply the dropped one was streaming. */
const resume = (turn: Turn, streamId: string): void => {
  const after = turn.lastSeq
  turn.id = nextId("resume")
  write({ type: "resume", request_id: turn.id, payload: { stream_id: streamId, after } })
  turn.bubble.dataset.state = "streaming"
  const note = turn.resumeNote ?? make("p", "note")
  note.textContent = `The connection dropped after seq ${after}; the reply was resumed.`
  if (turn.resumeNote === undefined) {
    turn.resumeNote = note
    note.dataset.testid = "resume-note"
    reveal(() => turn.bubble.append(note))
  }
}

/** What the page does with the reply in progress when the connection drops. */
const onDrop = (turn: Turn): void => {
  // Only a reply whose stream id is known can be resumed, and only for a while.
  if (turn.streamId === undefined || attempt >= RESUME_ATTEMPTS) {
    finish(turn, "error", "Connection lost: the reply was interrupted.")
    return
  }
  turn.bubble.dataset.state = "resuming"
}

/** Closes the connection as if the network had dropped it (?dropAfter). */
const dropConnection = (): void => socket?.close(4000, "dropped on purpose (?dropAfter)")

// ---------------------------------------------------------------------------
// the connection, reopened with exponential backoff (0.5 s doubling to 5 s, jittered)

const connect = (): void => {
  window.clearTimeout(retryTimer)
  let url: string
  try {
    url = serverUrl()
  } catch {
    setStatus("disconnected", "Invalid ?server= URL")
    return
  }
  element("server", HTMLElement).textContent = url.replace(/([?&]token=)[^&]*/, "$1…")
  setStatus("connecting", attempt === 0 ? "Connecting…" : `Reconnecting (attempt ${attempt + 1})…`)
  const ws = new WebSocket(url)
  socket = ws
  ws.addEventListener("open", () => {
    attempt = 0
    connected = true
    setStatus("connected", "Connected")
    if (active?.streamId !== undefined) resume(active, active.streamId)
    updateControls()
  })
  ws.addEventListener("message", (event: MessageEvent<unknown>) => {
    if (typeof event.data === "string") onFrame(JSON.parse(event.data) as ServerFrame)
  })
  ws.addEventListener("close", () => {
    if (socket !== ws) return
    socket = undefined
    connected = false
    if (active !== undefined) onDrop(active)
    const delay = Math.min(5000, 500 * 2 ** attempt) * (0.8 + Math.random() * 0.4)
    attempt++
    setStatus("disconnected", `Disconnected, reconnecting in ${(delay / 1000).toFixed(1)} s…`)
    retryTimer = window.setTimeout(connect, delay)
    updateControls()
  })
}

// Back online: try now rather than at the end of the backoff.
window.addEventListener("online", () => {
  if (socket === undefined) connect()
})

connect()
input.focus()
