/** A command-line client for AIBase's /ws JSON protocol: sends one request of every type and prints the answers live. */
//
//   node --import tsx examples/client/main.ts [host:port] [--token TOKEN] [--drop-after N]
//
// Defaults to localhost:8080; the token can also come from AIBASE_TOKEN.
// The streamed chat is resumable: when the connection drops, the client
// reconnects and resumes it from the last frame it saw. `--drop-after N`
// drops the connection on purpose after N content chunks, to show that.
// Exits 0 when every request got its final frame, 1 on an error frame, a
// connection failure or a timeout.
import { type ClientFrame, isFinalFrame, type ServerFrame } from "aibase/protocol"
import { once } from "node:events"
import { setTimeout as sleep } from "node:timers/promises"
import WebSocket from "ws"

const TIMEOUT_MS = 30_000
const LINE_WIDTH = 160
/** Reconnection: this many attempts, 0 s then 0.25 s doubling to 2 s apart, each handshake bounded. */
const RECONNECT_ATTEMPTS = 5
const HANDSHAKE_TIMEOUT_MS = 5_000
const backoff = (attempt: number): number => (attempt <= 1 ? 0 : Math.min(2_000, 250 * 2 ** (attempt - 2)))

// ---------------------------------------------------------------------------
// arguments

interface Options {
  readonly url: URL
  readonly token: string | undefined
  /** Drop the connection after this many content chunks of the resumable stream. */
  readonly dropAfter: number | undefined
}

const usage = "usage: node --import tsx examples/client/main.ts [host:port] [--token TOKEN] [--drop-after N]"

const parseArgs = (args: ReadonlyArray<string>): Options => {
  let target = "localhost:8080"
  let token = process.env["AIBASE_TOKEN"]
  let dropAfter: number | undefined
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    if (arg === "--token") {
      token = args[++i]
      if (token === undefined) throw new Error(`--token needs a value\n${usage}`)
    } else if (arg === "--drop-after") {
      const value = Number(args[++i])
      if (!Number.isInteger(value) || value < 1) throw new Error(`--drop-after needs a whole number of chunks ≥ 1\n${usage}`)
      dropAfter = value
    } else if (arg === "--help" || arg === "-h") {
      console.log(usage)
      process.exit(0)
    } else if (arg !== undefined) {
      target = arg
    }
  }
  // Accept a bare host:port as well as a ws:// or http:// base URL.
  const base = target.includes("://") ? target.replace(/^http/, "ws") : `ws://${target}`
  return { url: new URL("/ws", base), token: token === "" ? undefined : token, dropAfter }
}

// ---------------------------------------------------------------------------
// printing

/** One line: newlines flattened and long text cut, so that each frame stays on one line. */
const clip = (text: string, width = LINE_WIDTH): string => {
  const flat = text.replace(/\s*\n\s*/g, " ⏎ ")
  return flat.length > width ? `${flat.slice(0, width - 1)}…` : flat
}

/** The request whose stream deltas are being written inline, if a line is open. */
let openStream: string | undefined
const streamsSeen = new Set<string>()

const endStreamLine = (): void => {
  if (openStream !== undefined) {
    process.stdout.write("\n")
    openStream = undefined
  }
}

const say = (text: string): void => {
  endStreamLine()
  console.log(text)
}

const sent = (frame: ClientFrame): void => say(clip(`→ [${frame.request_id}] ${frame.type} ${JSON.stringify(frame.payload ?? {})}`))
const received = (requestId: string | null, text: string): void => say(clip(`← [${requestId ?? "-"}] ${text}`))

const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error))

/** The text a stream chunk adds. */
const contentOf = (frame: Extract<ServerFrame, { readonly type: "chat_completion_stream_chunk" }>): string =>
  frame.data.choices.map((choice) => choice.delta.content ?? "").join("")

/** A short human summary of each frame type; stream chunks are written inline as they arrive. */
const show = (frame: ServerFrame): void => {
  switch (frame.type) {
    case "pong":
      return received(frame.request_id, `pong timestamp=${frame.data.timestamp}`)
    case "chat_completion_response": {
      const choice = frame.data.choices[0]
      const calls = choice?.message.tool_calls?.map((call) => `${call.function.name}(${call.function.arguments})`) ?? []
      // The tools the server ran for this answer (auto_execute_tools), by name and arguments.
      const ran = frame.data.tool_rounds?.flatMap((round) =>
        round.executions.map((e) => `${e.tool_call.function.name}(${e.tool_call.function.arguments})`)
      ) ?? []
      return received(
        frame.request_id,
        `chat_completion_response model=${frame.data.model} finish=${choice?.finish_reason ?? "?"}` +
          ` tokens=${frame.data.usage?.total_tokens ?? "?"}` +
          (ran.length > 0 ? ` tools_run=[${ran.join(", ")}]` : "") +
          (calls.length > 0 ? ` tool_calls=[${calls.join(", ")}]` : "") +
          ` ${JSON.stringify(choice?.message.content ?? null)}`
      )
    }
    case "chat_completion_stream_start":
      return received(
        frame.request_id,
        `chat_completion_stream_start stream_id=${frame.data.stream_id} resumable_until=${frame.data.resumable_until}`
      )
    case "chat_completion_stream_chunk": {
      if (openStream !== frame.request_id) {
        endStreamLine()
        // A stream interrupted by another line carries on under a "…" prefix.
        const label = streamsSeen.has(frame.request_id) ? "…" : "streaming:"
        streamsSeen.add(frame.request_id)
        process.stdout.write(`← [${frame.request_id}] ${label} `)
        openStream = frame.request_id
      }
      process.stdout.write(contentOf(frame))
      for (const choice of frame.data.choices) {
        for (const call of choice.delta.tool_calls ?? []) {
          if (call.function?.name) process.stdout.write(`[calls ${call.function.name}]`)
        }
      }
      return
    }
    case "tool_execution":
      return received(
        frame.request_id,
        `tool_execution ${frame.data.tool_call.function.name}(${frame.data.tool_call.function.arguments})` +
          ` → ${JSON.stringify(frame.data.result.content)}`
      )
    case "chat_completion_stream_end":
      return received(
        frame.request_id,
        `chat_completion_stream_end finish=${frame.data.finish_reason ?? "?"} chars=${frame.data.content.length}` +
          ` tokens=${frame.data.usage?.total_tokens ?? "?"}`
      )
    case "embedding_response": {
      const vectors = frame.data.data
      const first = vectors[0]?.embedding ?? []
      const preview = first.slice(0, 4).map((x) => x.toFixed(4)).join(", ")
      return received(
        frame.request_id,
        `embedding_response model=${frame.data.model} ${vectors.length} vector(s) of ${first.length} dims [${preview}, …]`
      )
    }
    case "tools_list_response":
      return received(
        frame.request_id,
        `tools_list_response ${frame.data.tools.length} tools: ${frame.data.tools.map((tool) => tool.name).join(", ")}`
      )
    case "tool_execute_response":
      return received(
        frame.request_id,
        `tool_execute_response ${frame.data.tool_call_id} is_error=${frame.data.is_error} ${JSON.stringify(frame.data.content)}`
      )
    case "cancel_response":
      return received(
        frame.request_id,
        `cancel_response request_id=${frame.data.request_id} cancelled=${frame.data.cancelled}`
      )
    case "error":
      return received(
        frame.request_id,
        `error ${frame.data.category}/${frame.data.code} retryable=${frame.data.retryable}: ${frame.error}`
      )
  }
}

// ---------------------------------------------------------------------------
// the connection, replaced when it drops

/** A request waiting for its final frame. */
interface Pending {
  readonly resolve: (frame: ServerFrame) => void
  readonly reject: (error: Error) => void
  /** Asked for with `resumable: true`: survives a dropped connection once its stream id is known. */
  readonly resumable: boolean
  streamId: string | undefined
  /** The seq of the last frame seen: a resume asks for what comes after it. */
  lastSeq: number
}

interface Session {
  /** Sends a request (on the current connection, or the next one) and resolves with its final frame. */
  readonly request: (frame: ClientFrame) => Promise<ServerFrame>
  /** Calls `listener` with every frame shown, under the request id the client sent. */
  readonly onFrame: (listener: (frame: ServerFrame) => void) => () => void
  /** Drops the connection as a network failure would (no close handshake). */
  readonly drop: () => void
  /** Closes for good: no reconnecting after this. */
  readonly close: (graceful: boolean) => void
}

/**
 * One logical session over successive connections. When a connection drops,
 * the requests in flight that cannot be resumed fail, the client reconnects
 * (a bounded number of times), resumes each resumable stream after its last
 * seq, and sends the next requests over the new connection.
 */
const openSession = async (options: Options): Promise<Session> => {
  const headers: Record<string, string> = options.token === undefined ? {} : { authorization: `Bearer ${options.token}` }
  const pending = new Map<string, Pending>()
  /** Resume request ids → the id of the request whose stream they resume. */
  const aliases = new Map<string, string>()
  const listeners = new Set<(frame: ServerFrame) => void>()
  let socket: WebSocket | undefined
  let closing = false
  let resumes = 0

  const connect = async (): Promise<WebSocket> => {
    const ws = new WebSocket(options.url, { headers, handshakeTimeout: HANDSHAKE_TIMEOUT_MS })
    // `once` rejects on an "error" event: refused connection, 401, wrong path, handshake timeout...
    await once(ws, "open")
    // The run ended (a timeout) while this reconnection was under way: nothing will use it.
    if (closing) {
      ws.terminate()
      throw new Error("the client is closing")
    }
    ws.on("message", (data) => {
      // Frames still buffered on a connection given up on are left to the resume.
      if (ws !== socket) return
      // The server only sends ServerFrames; a client that must distrust it would validate here.
      receive(JSON.parse(data.toString()) as ServerFrame)
    })
    ws.on("close", (code, reason) => {
      if (ws === socket) lost(`connection closed (${[code, reason.toString()].filter((part) => part !== "").join(" ")})`)
    })
    ws.on("error", (error) => say(`WebSocket error: ${error.message}`))
    socket = ws
    return ws
  }

  const receive = (raw: ServerFrame): void => {
    // A resumed stream's frames are shown under the id of the request that started it.
    const started = raw.request_id === null ? undefined : aliases.get(raw.request_id)
    const frame: ServerFrame = started === undefined ? raw : { ...raw, request_id: started }
    const id = frame.request_id
    const waiting = id === null ? undefined : pending.get(id)
    const seq = "seq" in frame ? frame.seq : undefined
    if (waiting?.resumable === true && seq !== undefined) {
      // Frames keep their seq across a resume, so anything at or before the last one is a repeat.
      if (seq <= waiting.lastSeq) return
      waiting.lastSeq = seq
      if (frame.type === "chat_completion_stream_start") waiting.streamId = frame.data.stream_id
    }
    show(frame)
    for (const listener of listeners) listener(frame)
    if (id === null || waiting === undefined || !isFinalFrame(frame)) return
    pending.delete(id)
    waiting.resolve(frame)
  }

  /** The connection requests go out on: the open one, or the reconnection under way. */
  let ready: Promise<WebSocket> = connect()
  await ready
  say("Connected")

  const send = (ws: WebSocket, frame: ClientFrame): void => {
    sent(frame)
    ws.send(JSON.stringify(frame))
  }

  const lost = (reason: string): void => {
    socket = undefined
    if (closing) return
    say(`Connection lost: ${reason}`)
    // Only a stream whose id is known can be picked up again; everything else in flight fails.
    for (const [id, waiting] of pending) {
      if (waiting.streamId !== undefined) continue
      pending.delete(id)
      waiting.reject(new Error(`[${id}] ${reason}`))
    }
    ready = reconnect()
    ready.catch(() => {}) // Reported through the pending requests, and to the next request.
  }

  const reconnect = async (): Promise<WebSocket> => {
    for (let attempt = 1; attempt <= RECONNECT_ATTEMPTS; attempt++) {
      await sleep(backoff(attempt))
      if (closing) break
      say(`Reconnecting to ${options.url.href} (attempt ${attempt} of ${RECONNECT_ATTEMPTS})`)
      try {
        const ws = await connect()
        say("Reconnected")
        for (const [id, waiting] of pending) {
          if (waiting.streamId === undefined) continue
          const resumeId = `${id}~resume-${++resumes}`
          aliases.set(resumeId, id)
          send(ws, { type: "resume", request_id: resumeId, payload: { stream_id: waiting.streamId, after: waiting.lastSeq } })
          say(`(connection dropped after seq ${waiting.lastSeq}; resumed stream ${waiting.streamId} after ${waiting.lastSeq})`)
        }
        return ws
      } catch (error) {
        say(`Could not reconnect: ${messageOf(error)}`)
      }
    }
    const failure = new Error(`gave up reconnecting after ${RECONNECT_ATTEMPTS} attempts`)
    for (const waiting of pending.values()) waiting.reject(failure)
    pending.clear()
    throw failure
  }

  return {
    request: async (frame) => {
      const ws = await ready
      const resumable = frame.type === "chat_completion_stream" && frame.payload?.resumable === true
      const final = new Promise<ServerFrame>((resolve, reject) =>
        pending.set(frame.request_id, { resolve, reject, resumable, streamId: undefined, lastSeq: 0 })
      )
      send(ws, frame)
      return final
    },
    onFrame: (listener) => {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    drop: () => socket?.terminate(),
    close: (graceful) => {
      closing = true
      if (graceful) socket?.close(1000)
      else socket?.terminate()
    }
  }
}

// ---------------------------------------------------------------------------
// the requests

const main = async (): Promise<number> => {
  const options = parseArgs(process.argv.slice(2))
  say(`Connecting to ${options.url.href}`)
  let session: Session
  try {
    session = await openSession(options)
  } catch (error) {
    say(`Could not connect to ${options.url.href}: ${messageOf(error)}`)
    return 1
  }

  let unexpectedErrors = 0
  /** The stream this client cancels on purpose: its "cancelled" error frame is expected. */
  const cancelTarget = "stream-to-cancel"
  session.onFrame((frame) => {
    if (frame.type === "error" && !(frame.request_id === cancelTarget && frame.data.category === "cancelled")) {
      unexpectedErrors++
    }
  })

  const { request } = session

  // get_weather exactly as the seed's README calls it.
  const weatherCall = {
    id: "call_123",
    type: "function",
    function: { name: "get_weather", arguments: JSON.stringify({ location: "San Francisco, CA" }) }
  } as const

  const requests = async (): Promise<void> => {
    await request({ type: "ping", request_id: "ping-1" })

    await request({
      type: "chat_completion",
      request_id: "chat-1",
      payload: {
        messages: [
          { role: "system", content: "You are a helpful assistant." },
          { role: "user", content: "Hello!" }
        ],
        max_tokens: 100
      }
    })

    // Resumable: a dropped connection picks it up again where it stopped.
    const streamId = "stream-1"
    let chunks = 0
    const stopCounting = session.onFrame((frame) => {
      if (frame.request_id !== streamId || frame.type !== "chat_completion_stream_chunk" || contentOf(frame) === "") return
      if (++chunks !== options.dropAfter) return
      say(`(--drop-after ${options.dropAfter}: dropping the connection on purpose)`)
      session.drop()
    })
    await request({
      type: "chat_completion_stream",
      request_id: streamId,
      payload: { messages: [{ role: "user", content: "Tell me a short story" }], max_tokens: 200, resumable: true }
    }).finally(stopCounting)
    if (options.dropAfter !== undefined && chunks < options.dropAfter) {
      say(`(--drop-after ${options.dropAfter}: the stream had only ${chunks} content chunks; nothing was dropped)`)
    }

    await request({
      type: "embedding",
      request_id: "embedding-1",
      payload: { input: "The quick brown fox jumps over the lazy dog" }
    })

    await request({ type: "tools_list", request_id: "tools-1", payload: {} })

    await request({ type: "tool_execute", request_id: "tool-1", payload: { tool_call: weatherCall } })

    // The server runs the tools the model asks for and calls the model again.
    await request({
      type: "chat_completion",
      request_id: "chat-tools-1",
      payload: {
        messages: [{ role: "user", content: "What's the weather in Paris?" }],
        tools: "registry",
        auto_execute_tools: true
      }
    })

    // Start a stream and cancel it once its first frame is here. If the stream
    // wins the race it simply ends, and the cancel answers cancelled=false.
    let stopWaiting = (): void => {}
    const firstFrame = new Promise<void>((resolve) => {
      stopWaiting = session.onFrame((frame) => {
        if (frame.request_id === cancelTarget) resolve()
      })
    })
    const stream = request({
      type: "chat_completion_stream",
      request_id: cancelTarget,
      payload: { messages: [{ role: "user", content: "Tell me a very long story about the sea" }] }
    })
    // The stream's own failure (a dropped connection) must not leave this wait hanging.
    await Promise.race([firstFrame, stream]).finally(stopWaiting)
    const cancel = request({ type: "cancel", request_id: "cancel-1", payload: { request_id: cancelTarget } })
    await Promise.all([stream, cancel])
  }

  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${TIMEOUT_MS / 1000} s`)), TIMEOUT_MS)
  })
  try {
    await Promise.race([requests(), timeout])
  } catch (error) {
    say(`Failed: ${messageOf(error)}`)
    session.close(false)
    return 1
  } finally {
    clearTimeout(timer)
  }

  session.close(true)
  if (unexpectedErrors > 0) {
    say(`Done, with ${unexpectedErrors} error frame(s)`)
    return 1
  }
  say("Done: every request got its answer")
  return 0
}

main().then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    say(messageOf(error))
    process.exitCode = 1
  }
)
