// @ts-check
/**
 * The AIBase console: live charts from GET /console/series (uPlot), and a
 * chat playground over /ws. A plain ES module served as is (no build step).
 *
 * Every URL is relative to the page, so the console also works behind a
 * proxy that mounts AIBase under a path prefix.
 */
import uPlot from "./uPlot.esm.js"

const POLL_MS = 2000
const TOKEN_KEY = "aibase.console.token"
const CHART_HEIGHT = 170

/**
 * @typedef {{
 *   t: number[],
 *   requests: Record<string, number[]>,
 *   errors: Record<string, number[]>,
 *   ttft_p50_ms: (number | null)[],
 *   ttft_p95_ms: (number | null)[],
 *   tokens_in: number[],
 *   tokens_out: number[],
 *   connections: (number | null)[],
 *   in_flight: (number | null)[]
 * }} Snapshot
 */

/** @param {string} id */
const $ = (id) => {
  const element = document.getElementById(id)
  if (element === null) throw new Error(`#${id} is missing from the page`)
  return element
}
/** @param {string} id */
const input = (id) => /** @type {HTMLInputElement} */ ($(id))
/** @param {string} id */
const button = (id) => /** @type {HTMLButtonElement} */ ($(id))

/**
 * @param {string} tag
 * @param {string} [className]
 * @param {string} [text]
 */
const el = (tag, className, text) => {
  const element = document.createElement(tag)
  if (className !== undefined) element.className = className
  if (text !== undefined) element.textContent = text
  return element
}

// ---------------------------------------------------------------------------
// The token: asked for when the server wants one, kept for this tab only.

/** Signals that a request was refused for want of a (valid) token. */
class Unauthorized extends Error {}

const token = {
  /** @returns {string | null} */
  get: () => sessionStorage.getItem(TOKEN_KEY),
  /** @param {string} value */
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY)
}

/** A `?token=` in the page's URL is taken into the tab's storage and removed from the address bar. */
const adoptTokenFromUrl = () => {
  const url = new URL(location.href)
  const given = url.searchParams.get("token")
  if (given === null) return
  if (given !== "") token.set(given)
  url.searchParams.delete("token")
  history.replaceState(null, "", url)
}

const authMode = document.querySelector('meta[name="aibase-auth"]')?.getAttribute("content") ?? "unknown"

/**
 * Fetches JSON from the server with the token, if any.
 * @param {string} path relative to the page
 */
const api = async (path) => {
  const value = token.get()
  /** @type {Record<string, string>} */
  const headers = { accept: "application/json" }
  if (value !== null) headers["authorization"] = `Bearer ${value}`
  const response = await fetch(path, { headers, cache: "no-store" })
  if (response.status === 401) throw new Unauthorized()
  if (!response.ok) throw new Error(`${path} answered ${response.status}`)
  return response.json()
}

/** @param {"needed" | "rejected"} why */
const askForToken = (why) => {
  stopPolling()
  socket.stop()
  $("auth").hidden = false
  $("app").hidden = true
  button("forget-token").hidden = true
  $("auth-message").textContent = why === "rejected"
    ? "That token was not accepted. Enter a token from AUTH_TOKENS; it is kept for this tab only."
    : "This server needs a token (AUTH_TOKENS). It is kept for this tab only."
  $("auth").dataset["state"] = why
  setStatus("locked", "token needed")
  input("token").focus()
}

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault()
  const value = input("token").value.trim()
  if (value === "") return
  token.set(value)
  input("token").value = ""
  void start()
})

button("forget-token").addEventListener("click", () => {
  token.clear()
  askForToken("needed")
})

// ---------------------------------------------------------------------------
// Status line

/**
 * @param {string} state
 * @param {string} text
 */
const setStatus = (state, text) => {
  const status = $("status")
  status.dataset["state"] = state
  status.textContent = text
}

// ---------------------------------------------------------------------------
// Charts

const COLORS = {
  ok: "#2e9d5b",
  connections: "#2f6fde",
  inFlight: "#e08a1e",
  p50: "#2f6fde",
  p95: "#c23b7a",
  input: "#2f6fde",
  output: "#2e9d5b"
}
/** Colours for statuses and error categories, by name so they stay put. */
const CATEGORY_COLORS = /** @type {Record<string, string>} */ ({
  validation: "#c98a00",
  authentication: "#7a4fd6",
  permission: "#9c5bd1",
  not_found: "#6c7a89",
  rate_limit: "#e0631e",
  timeout: "#b5651d",
  upstream: "#d63b3b",
  cancelled: "#8a8f98",
  overloaded: "#e8a33d",
  unavailable: "#5b6ee1",
  internal: "#8b1e3f"
})
/** @param {string} name */
const colorOf = (name) => name === "ok" ? COLORS.ok : CATEGORY_COLORS[name] ?? "#444b55"

/**
 * @typedef {{ label: string, color: string, dash?: number[], points?: boolean }} Line
 * @typedef {{ lines: Line[], data: (number | null)[][], total: number }} ChartData
 */

/**
 * Shows each line's latest value in the legend while the cursor is off the
 * chart (uPlot shows "--" there).
 * @param {uPlot} u
 */
const showLatest = (u) => {
  if (u.cursor.idx !== null && u.cursor.idx !== undefined) return
  const idxs = u.data.map((values, i) => {
    if (i === 0) return values.length - 1
    for (let j = values.length - 1; j >= 0; j--) if (values[j] !== null && values[j] !== undefined) return j
    return null
  })
  u.setLegend({ idxs }, false)
}

/** One uPlot chart in a `<figure>`, rebuilt when its set of lines changes. */
class Chart {
  /**
   * @param {string} id the figure's id
   * @param {{ integer?: boolean }} [options]
   */
  constructor(id, options = {}) {
    this.figure = $(id)
    const plot = this.figure.querySelector(".plot")
    if (!(plot instanceof HTMLElement)) throw new Error(`#${id} has no .plot`)
    this.plot = plot
    this.integer = options.integer ?? false
    /** @type {uPlot | undefined} */
    this.chart = undefined
    this.key = ""
    new ResizeObserver(() => this.resize()).observe(this.plot)
  }

  width() {
    return Math.max(200, Math.floor(this.plot.clientWidth))
  }

  resize() {
    if (this.chart === undefined) return
    const width = this.width()
    if (width !== this.chart.width) this.chart.setSize({ width, height: CHART_HEIGHT })
  }

  /**
   * @param {number[]} t
   * @param {ChartData} data
   */
  update(t, data) {
    const key = data.lines.map((line) => line.label).join("\u0000")
    /** @type {uPlot.AlignedData} */
    const aligned = [t, ...data.data]
    this.figure.dataset["total"] = String(data.total)
    this.figure.dataset["lines"] = data.lines.map((line) => line.label).join(",")
    if (this.chart !== undefined && key === this.key) {
      this.chart.setData(aligned)
      showLatest(this.chart)
      return
    }
    this.chart?.destroy()
    this.key = key
    const integer = this.integer
    this.chart = new uPlot({
      width: this.width(),
      height: CHART_HEIGHT,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      hooks: { setLegend: [showLatest] },
      scales: { y: { range: (_u, _min, max) => [0, Math.max(integer ? 2 : 1, max * 1.1)] } },
      axes: [
        { stroke: "#5b6470", grid: { stroke: "#e6e9ee" }, ticks: { stroke: "#d5d9e0" } },
        {
          stroke: "#5b6470",
          grid: { stroke: "#e6e9ee" },
          ticks: { stroke: "#d5d9e0" },
          size: 48,
          ...(integer ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000, 1000000] } : {})
        }
      ],
      series: [
        {},
        ...data.lines.map((line) => ({
          label: line.label,
          stroke: line.color,
          width: 1.5,
          spanGaps: true,
          points: line.points === true ? { show: true, size: 5 } : { show: false },
          ...(line.dash === undefined ? {} : { dash: line.dash })
        }))
      ]
    }, aligned, this.plot)
    showLatest(this.chart)
  }
}

/** @param {(number | null)[]} values */
const sum = (values) => values.reduce((/** @type {number} */ total, value) => total + (value ?? 0), 0)

/**
 * Sums over the trailing 60 seconds; null until a whole minute is in the window.
 * @param {number[]} perSecond
 */
const perMinute = (perSecond) => {
  /** @type {(number | null)[]} */
  const out = []
  let running = 0
  for (let i = 0; i < perSecond.length; i++) {
    running += perSecond[i] ?? 0
    if (i >= 60) running -= perSecond[i - 60] ?? 0
    out.push(i >= 59 ? running : null)
  }
  return out
}

/** @param {(number | null)[]} values */
const last = (values) => {
  for (let i = values.length - 1; i >= 0; i--) {
    const value = values[i]
    if (value !== null && value !== undefined) return value
  }
  return null
}

const charts = {
  connections: new Chart("chart-connections", { integer: true }),
  requests: new Chart("chart-requests", { integer: true }),
  ttft: new Chart("chart-ttft"),
  tokens: new Chart("chart-tokens", { integer: true }),
  errors: new Chart("chart-errors", { integer: true })
}

/** @param {number} n */
const format = (n) => n >= 10_000 ? `${(n / 1000).toFixed(n >= 100_000 ? 0 : 1)}k` : String(Math.round(n))

/** @param {Snapshot} s */
const render = (s) => {
  charts.connections.update(s.t, {
    lines: [{ label: "connections", color: COLORS.connections }, { label: "in flight", color: COLORS.inFlight }],
    data: [s.connections, s.in_flight],
    total: sum(s.connections) + sum(s.in_flight)
  })

  const statuses = Object.keys(s.requests)
  charts.requests.update(s.t, {
    lines: statuses.map((status) => ({ label: status, color: colorOf(status) })),
    data: statuses.map((status) => s.requests[status] ?? []),
    total: statuses.reduce((total, status) => total + sum(s.requests[status] ?? []), 0)
  })

  charts.ttft.update(s.t, {
    // Sparse (only seconds in which a stream finished): points, so a lone second shows.
    lines: [
      { label: "p50", color: COLORS.p50, points: true },
      { label: "p95", color: COLORS.p95, dash: [6, 4], points: true }
    ],
    data: [s.ttft_p50_ms, s.ttft_p95_ms],
    total: s.ttft_p50_ms.filter((value) => value !== null).length
  })

  charts.tokens.update(s.t, {
    lines: [{ label: "input", color: COLORS.input }, { label: "output", color: COLORS.output }],
    data: [perMinute(s.tokens_in), perMinute(s.tokens_out)],
    total: sum(s.tokens_in) + sum(s.tokens_out)
  })

  const categories = Object.keys(s.errors)
  charts.errors.update(s.t, categories.length === 0
    ? { lines: [{ label: "none", color: "#b8bec7" }], data: [s.t.map(() => 0)], total: 0 }
    : {
      lines: categories.map((category) => ({ label: category, color: colorOf(category) })),
      data: categories.map((category) => s.errors[category] ?? []),
      total: categories.reduce((total, category) => total + sum(s.errors[category] ?? []), 0)
    })

  $("tile-connections").textContent = format(last(s.connections) ?? 0)
  $("tile-in-flight").textContent = format(last(s.in_flight) ?? 0)
  $("tile-requests").textContent = format(statuses.reduce((total, status) => total + sum(s.requests[status] ?? []), 0))
  $("tile-tokens").textContent = format(sum(s.tokens_in) + sum(s.tokens_out))
  $("tile-errors").textContent = format(categories.reduce((total, category) => total + sum(s.errors[category] ?? []), 0))
}

// ---------------------------------------------------------------------------
// Polling /console/series

/** @type {ReturnType<typeof setTimeout> | undefined} */
let pollTimer = undefined
let polling = false

const stopPolling = () => {
  polling = false
  if (pollTimer !== undefined) clearTimeout(pollTimer)
  pollTimer = undefined
}

const poll = async () => {
  if (!polling) return
  pollTimer = undefined
  // A hidden tab asks for nothing; it catches up when shown again.
  if (!document.hidden) {
    try {
      render(/** @type {Snapshot} */ (await api("console/series")))
      $("series-error").hidden = true
      document.body.dataset["series"] = "ok"
    } catch (error) {
      if (error instanceof Unauthorized) {
        token.clear()
        askForToken("rejected")
        return
      }
      $("series-error").hidden = false
      $("series-error").textContent = `Could not load the series: ${error instanceof Error ? error.message : String(error)}`
      document.body.dataset["series"] = "error"
    }
  }
  if (polling) pollTimer = setTimeout(() => void poll(), POLL_MS)
}

const startPolling = () => {
  stopPolling()
  polling = true
  void poll()
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && polling && pollTimer !== undefined) {
    clearTimeout(pollTimer)
    void poll()
  }
})

// ---------------------------------------------------------------------------
// The WebSocket, reconnecting with backoff

/**
 * @typedef {{ type: string, request_id: string | null, seq?: number, error?: string, data?: any }} Frame
 */

const socket = {
  /** @type {WebSocket | undefined} */
  ws: undefined,
  stopped: true,
  retryMs: 500,
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  retryTimer: undefined,

  url() {
    const url = new URL("ws", document.baseURI)
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:"
    const value = token.get()
    if (value !== null) url.searchParams.set("token", value)
    return url.href
  },

  start() {
    this.stopped = false
    if (this.ws === undefined) this.open()
  },

  stop() {
    this.stopped = true
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    const ws = this.ws
    this.ws = undefined
    ws?.close(1000)
    chat.connectionLost()
  },

  open() {
    setStatus("connecting", "connecting…")
    const ws = new WebSocket(this.url())
    this.ws = ws
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return
      this.retryMs = 500
      setStatus("connected", "connected")
      chat.refreshButtons()
    })
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws || typeof event.data !== "string") return
      /** @type {Frame} */
      let frame
      try {
        frame = JSON.parse(event.data)
      } catch {
        return
      }
      chat.onFrame(frame)
    })
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return
      this.ws = undefined
      chat.connectionLost()
      if (this.stopped) return
      setStatus("disconnected", "disconnected, retrying…")
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined
        if (!this.stopped) this.open()
      }, this.retryMs)
      this.retryMs = Math.min(this.retryMs * 2, 10_000)
    })
  },

  /** @param {unknown} frame */
  send(frame) {
    if (this.ws === undefined || this.ws.readyState !== WebSocket.OPEN) return false
    this.ws.send(JSON.stringify(frame))
    return true
  },

  isOpen() {
    return this.ws !== undefined && this.ws.readyState === WebSocket.OPEN
  }
}

// ---------------------------------------------------------------------------
// The playground

let nextId = 0
const newRequestId = () => `console-${Date.now().toString(36)}-${++nextId}`

/**
 * One assistant reply on screen, filled in as its frames arrive.
 */
class Turn {
  /** @param {string} requestId */
  constructor(requestId) {
    this.requestId = requestId
    this.content = ""
    this.bubble = el("article", "msg assistant")
    this.bubble.dataset["role"] = "assistant"
    this.bubble.dataset["state"] = "streaming"
    this.bubble.append(el("span", "who", "Assistant"))
    this.tools = el("ol", "tools")
    this.text = el("div", "text")
    this.text.dataset["testid"] = "assistant-text"
    this.meta = el("p", "meta")
    this.meta.dataset["testid"] = "meta"
    this.bubble.append(this.tools, this.text, this.meta)
  }

  /** @param {string} delta */
  append(delta) {
    this.content += delta
    this.text.textContent = this.content
  }

  /** @param {{ tool_call: { function: { name: string, arguments: string } }, result: { content: string, is_error: boolean } }} execution */
  tool(execution) {
    const item = el("li", execution.result.is_error ? "tool failed" : "tool")
    item.dataset["testid"] = "tool-execution"
    const call = el("code", "call", `${execution.tool_call.function.name}(${execution.tool_call.function.arguments})`)
    const result = el("span", "result", `→ ${execution.result.content}`)
    item.append(el("span", "icon", "⚙"), call, result)
    this.tools.append(item)
  }

  /** @param {{ finish_reason: string | null, usage?: { prompt_tokens: number, completion_tokens: number, total_tokens: number } | null, tool_rounds?: unknown[] }} end */
  end(end) {
    this.bubble.dataset["state"] = "done"
    const parts = []
    if (end.usage) {
      const usage = el("span", "usage", `${end.usage.prompt_tokens} in · ${end.usage.completion_tokens} out · ${end.usage.total_tokens} tokens`)
      usage.dataset["testid"] = "usage"
      parts.push(usage)
    }
    if (end.finish_reason) parts.push(el("span", "", `finish: ${end.finish_reason}`))
    if (end.tool_rounds && end.tool_rounds.length > 0) {
      parts.push(el("span", "", `${end.tool_rounds.length} tool round${end.tool_rounds.length === 1 ? "" : "s"}`))
    }
    this.meta.replaceChildren(...parts)
  }

  /**
   * @param {string} state
   * @param {string} message
   */
  fail(state, message) {
    this.bubble.dataset["state"] = state
    const note = el("span", state === "cancelled" ? "note" : "note error", message)
    note.dataset["testid"] = "note"
    this.meta.replaceChildren(note)
  }
}

const chat = {
  /** @type {{ role: string, content: string }[]} */
  history: [],
  /** @type {Turn | undefined} */
  turn: undefined,
  /** The default model, from /info. */
  defaultModel: "",

  refreshButtons() {
    const busy = this.turn !== undefined
    button("send").disabled = busy || !socket.isOpen()
    button("cancel").disabled = !busy
  },

  /** @param {string} text */
  addUser(text) {
    const bubble = el("article", "msg user")
    bubble.dataset["role"] = "user"
    bubble.append(el("span", "who", "You"), el("div", "text", text))
    this.appendToTranscript(bubble)
  },

  /** @param {HTMLElement} element */
  appendToTranscript(element) {
    const transcript = $("transcript")
    transcript.append(element)
    transcript.scrollTop = transcript.scrollHeight
  },

  send() {
    const prompt = /** @type {HTMLTextAreaElement} */ ($("prompt"))
    const text = prompt.value.trim()
    if (text === "" || this.turn !== undefined) return
    const model = input("model").value.trim() || this.defaultModel
    const requestId = newRequestId()
    this.history.push({ role: "user", content: text })
    /** @type {Record<string, unknown>} */
    const payload = { messages: this.history.slice() }
    if (model !== "") payload["model"] = model
    if (input("tool-loop").checked) {
      payload["tools"] = "registry"
      payload["auto_execute_tools"] = true
    }
    if (!socket.send({ type: "chat_completion_stream", request_id: requestId, payload })) {
      this.history.pop()
      return
    }
    prompt.value = ""
    this.addUser(text)
    this.turn = new Turn(requestId)
    this.appendToTranscript(this.turn.bubble)
    this.refreshButtons()
  },

  cancel() {
    if (this.turn === undefined) return
    socket.send({ type: "cancel", request_id: newRequestId(), payload: { request_id: this.turn.requestId } })
  },

  /**
   * Ends the current turn; the reply (what there is of it) stays in the conversation.
   * @param {(turn: Turn) => void} finish
   */
  finish(finish) {
    const turn = this.turn
    if (turn === undefined) return
    finish(turn)
    this.history.push({ role: "assistant", content: turn.content })
    this.turn = undefined
    this.refreshButtons()
    const transcript = $("transcript")
    transcript.scrollTop = transcript.scrollHeight
  },

  /** @param {Frame} frame */
  onFrame(frame) {
    const turn = this.turn
    if (turn === undefined || frame.request_id !== turn.requestId) return
    switch (frame.type) {
      case "chat_completion_stream_chunk": {
        const delta = frame.data?.choices?.[0]?.delta?.content
        if (typeof delta === "string" && delta !== "") {
          turn.append(delta)
          const transcript = $("transcript")
          transcript.scrollTop = transcript.scrollHeight
        }
        return
      }
      case "tool_execution":
        turn.tool(frame.data)
        return
      case "chat_completion_stream_end":
        this.finish((t) => {
          // The end frame holds the final round's whole text; chunks of earlier rounds were shown as they came.
          if (typeof frame.data?.content === "string" && t.content === "") t.append(frame.data.content)
          t.end(frame.data)
        })
        return
      case "error": {
        const category = frame.data?.category
        this.finish((t) =>
          category === "cancelled"
            ? t.fail("cancelled", "Cancelled")
            : t.fail("error", `Error (${category ?? "unknown"}): ${frame.error ?? "unknown error"}`)
        )
        return
      }
    }
  },

  connectionLost() {
    this.finish((turn) => turn.fail("error", "The connection was lost"))
    this.refreshButtons()
  },

  reset() {
    if (this.turn !== undefined) return
    this.history = []
    $("transcript").replaceChildren()
  }
}

$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault()
  chat.send()
})
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault()
    chat.send()
  }
})
button("cancel").addEventListener("click", () => chat.cancel())
button("new-chat").addEventListener("click", () => chat.reset())

// ---------------------------------------------------------------------------
// Start

/**
 * @param {{ name: string, version: string, provider: string, models: { chat: string }, tools: string[] }} info
 */
const showInfo = (info) => {
  chat.defaultModel = info.models.chat
  const model = input("model")
  if (model.value === "") model.value = info.models.chat
  $("server-info").textContent = `${info.name} ${info.version} · ${info.provider} · tools: ${info.tools.join(", ") || "none"}`
}

const start = async () => {
  if (authMode === "required" && token.get() === null) {
    askForToken("needed")
    return
  }
  try {
    showInfo(await api("info"))
  } catch (error) {
    if (error instanceof Unauthorized) {
      const hadToken = token.get() !== null
      token.clear()
      askForToken(hadToken ? "rejected" : "needed")
      return
    }
    setStatus("error", `cannot reach the server: ${error instanceof Error ? error.message : String(error)}`)
    // The server may be starting: try again shortly.
    setTimeout(() => void start(), 3000)
    return
  }
  $("auth").hidden = true
  $("app").hidden = false
  button("forget-token").hidden = token.get() === null
  startPolling()
  socket.start()
}

adoptTokenFromUrl()
void start()
