/** A command-line client for AIBase's /ws JSON protocol: sends one request of every type and prints the answers live. */
//
//   node --import tsx examples/client/main.ts [host:port] [--token TOKEN]
//
// Defaults to localhost:8080; the token can also come from AIBASE_TOKEN.
// Exits 0 when every request got its final frame, 1 on an error frame, a
// connection failure or a timeout.
import { type ClientFrame, isFinalFrame, type ServerFrame } from "aibase/protocol"
import { once } from "node:events"
import WebSocket from "ws"

const TIMEOUT_MS = 30_000
const LINE_WIDTH = 160

// ---------------------------------------------------------------------------
// arguments

interface Options {
  readonly url: URL
  readonly token: string | undefined
}

const usage = "usage: node --import tsx examples/client/main.ts [host:port] [--token TOKEN]"

const parseArgs = (args: ReadonlyArray<string>): Options => {
  let target = "localhost:8080"
  let token = process.env["AIBASE_TOKEN"]
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    if (arg === "--token") {
      token = args[++i]
      if (token === undefined) throw new Error(`--token needs a value\n${usage}`)
    } else if (arg === "--help" || arg === "-h") {
      console.log(usage)
      process.exit(0)
    } else if (arg !== undefined) {
      target = arg
    }
  }
  // Accept a bare host:port as well as a ws:// or http:// base URL.
  const base = target.includes("://") ? target.replace(/^http/, "ws") : `ws://${target}`
  return { url: new URL("/ws", base), token: token === "" ? undefined : token }
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
    case "chat_completion_stream_chunk": {
      if (openStream !== frame.request_id) {
        endStreamLine()
        // A stream interrupted by another line carries on under a "…" prefix.
        const label = streamsSeen.has(frame.request_id) ? "…" : "streaming:"
        streamsSeen.add(frame.request_id)
        process.stdout.write(`← [${frame.request_id}] ${label} `)
        openStream = frame.request_id
      }
      for (const choice of frame.data.choices) {
        if (choice.delta.content) process.stdout.write(choice.delta.content)
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
// the connection

const main = async (): Promise<number> => {
  const options = parseArgs(process.argv.slice(2))
  const headers: Record<string, string> = options.token === undefined ? {} : { authorization: `Bearer ${options.token}` }
  say(`Connecting to ${options.url.href}`)
  const ws = new WebSocket(options.url, { headers })
  try {
    // `once` rejects on an "error" event: refused connection, 401, wrong path...
    await once(ws, "open")
  } catch (error) {
    say(`Could not connect to ${options.url.href}: ${error instanceof Error ? error.message : String(error)}`)
    return 1
  }
  say("Connected")

  const pending = new Map<string, (frame: ServerFrame) => void>()
  let unexpectedErrors = 0
  /** The stream this client cancels on purpose: its "cancelled" error frame is expected. */
  const cancelTarget = "stream-to-cancel"

  ws.on("message", (data) => {
    // The server only sends ServerFrames; a client that must distrust it would validate here.
    const frame = JSON.parse(data.toString()) as ServerFrame
    show(frame)
    if (frame.type === "error" && !(frame.request_id === cancelTarget && frame.data.category === "cancelled")) {
      unexpectedErrors++
    }
    if (frame.request_id === null || !isFinalFrame(frame)) return
    const resolve = pending.get(frame.request_id)
    pending.delete(frame.request_id)
    resolve?.(frame)
  })

  const closed = new Promise<never>((_, reject) => {
    ws.on("close", (code, reason) => reject(new Error(`connection closed (${code} ${reason.toString()})`)))
  })
  closed.catch(() => {}) // Only a pending request cares; see `request`.
  ws.on("error", (error) => say(`WebSocket error: ${error.message}`))

  /** Sends a request and resolves with its final frame. */
  const request = (frame: ClientFrame): Promise<ServerFrame> => {
    const final = new Promise<ServerFrame>((resolve) => pending.set(frame.request_id, resolve))
    sent(frame)
    ws.send(JSON.stringify(frame))
    return Promise.race([final, closed])
  }

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

    await request({
      type: "chat_completion_stream",
      request_id: "stream-1",
      payload: { messages: [{ role: "user", content: "Tell me a short story" }], max_tokens: 200 }
    })

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

    // Start a stream and cancel it once its first chunk is here. If the stream
    // wins the race it simply ends, and the cancel answers cancelled=false.
    const stream = request({
      type: "chat_completion_stream",
      request_id: cancelTarget,
      payload: { messages: [{ role: "user", content: "Tell me a very long story about the sea" }] }
    })
    await new Promise<void>((resolve) => {
      const onMessage = (data: WebSocket.RawData) => {
        const text = data.toString()
        if (text.includes(`"request_id":"${cancelTarget}"`)) {
          ws.off("message", onMessage)
          resolve()
        }
      }
      ws.on("message", onMessage)
    })
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
    say(`Failed: ${error instanceof Error ? error.message : String(error)}`)
    ws.terminate()
    return 1
  } finally {
    clearTimeout(timer)
  }

  ws.close(1000)
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
    say(error instanceof Error ? error.message : String(error))
    process.exitCode = 1
  }
)
