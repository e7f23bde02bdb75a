/** An Effect client for AIBase's /rpc endpoint: every RPC through `RpcClient.make(AiBaseRpcs)`, with typed errors. */
//
//   node --import tsx examples/effect-client/main.ts [host:port] [--token TOKEN] [--drop-after N]
//
// Defaults to localhost:8080; the token can also come from AIBASE_TOKEN.
// The streamed chat is resumable: when its connection drops, the client
// opens a new one and calls `Resume` after the last `seq` it saw.
// `--drop-after N` closes the connection on purpose after N content chunks.
import { Socket } from "@effect/platform"
import { NodeRuntime, NodeSocket } from "@effect/platform-node"
import { RpcClient, type RpcClientError, RpcSerialization } from "@effect/rpc"
import { type AiBaseError, AiBaseRpcs, type ChatCompletionRequest, type ChatStreamEvent } from "aibase/protocol"
import { Console, Duration, Effect, ExecutionStrategy, Exit, Layer, Scope, Stream } from "effect"

// ---------------------------------------------------------------------------
// arguments

interface Options {
  readonly url: string
  readonly dropAfter: number | undefined
}

const parseArgs = (args: ReadonlyArray<string>): Options => {
  let target = "localhost:8080"
  let token = process.env["AIBASE_TOKEN"]
  let dropAfter: number | undefined
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    if (arg === "--token") token = args[++i]
    else if (arg === "--drop-after") dropAfter = Number(args[++i])
    else if (arg !== undefined) target = arg
  }
  if (dropAfter !== undefined && !(Number.isInteger(dropAfter) && dropAfter >= 1)) {
    throw new Error("--drop-after needs a whole number of chunks ≥ 1")
  }
  const url = new URL("/rpc", target.includes("://") ? target.replace(/^http/, "ws") : `ws://${target}`)
  // Node's WebSocket cannot be given headers here, so the token goes in the query (the server accepts both).
  if (token !== undefined && token !== "") url.searchParams.set("token", token)
  return { url: url.href, dropAfter }
}

const options = parseArgs(process.argv.slice(2))

// ---------------------------------------------------------------------------
// connections

/** The newest WebSocket, so that --drop-after can close the connection under the client. */
let newestSocket: globalThis.WebSocket | undefined
const WebSocketConstructor = Layer.effect(
  Socket.WebSocketConstructor,
  Effect.map(Socket.WebSocketConstructor, (make) => (url, protocols) => (newestSocket = make(url, protocols)))
).pipe(Layer.provide(NodeSocket.layerWebSocketConstructor))

// The socket, the RPC protocol on it, and JSON serialization (it must match the server's).
const ProtocolLive = RpcClient.layerProtocolSocket().pipe(
  Layer.provide(Socket.layerWebSocket(options.url)),
  Layer.provide(WebSocketConstructor),
  Layer.provide(RpcSerialization.layerJson)
)

type Client = RpcClient.FromGroup<typeof AiBaseRpcs, RpcClientError.RpcClientError>
/** What a stream can fail with: the server's typed errors, or the transport's. */
type StreamError = AiBaseError | RpcClientError.RpcClientError

interface Connection {
  readonly client: Client
  /** Closes the socket (the protocol would otherwise keep reconnecting it in the background). */
  readonly close: Effect.Effect<void>
}

/** A client on a connection of its own, closed at the latest with the program's scope. */
const connect: Effect.Effect<Connection, never, Scope.Scope> = Effect.gen(function*() {
  const scope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
  const protocol = yield* Layer.buildWithScope(ProtocolLive, scope)
  const client = yield* RpcClient.make(AiBaseRpcs).pipe(Effect.provide(protocol), Scope.extend(scope))
  return { client, close: Scope.close(scope, Exit.void) }
})

/** Resuming: this many new connections at most, 0.25 s doubling apart. */
const RESUME_ATTEMPTS = 5
const backoff = (attempt: number) => Duration.millis(Math.min(2_000, 250 * 2 ** (attempt - 1)))

/**
 * Runs a resumable ChatCompletionStream to its end, handing each event to
 * `render` once. When the connection drops (an RpcClientError: the server's
 * own errors are AiBaseErrors), it resumes the stream on a new connection
 * after the last seq seen. Returns the connection that is still open.
 */
const streamResumably = (
  first: Connection,
  request: ChatCompletionRequest,
  render: (event: ChatStreamEvent) => Effect.Effect<void>
) => {
  let streamId: string | undefined
  let lastSeq = 0

  const follow = (events: Stream.Stream<ChatStreamEvent, StreamError>) =>
    Stream.runForEach(events, (event) => {
      // Events keep their seq across a resume: one at or before the last seen is a repeat.
      if (event.seq !== undefined) {
        if (event.seq <= lastSeq) return Effect.void
        lastSeq = event.seq
      }
      if (event._tag === "chat_completion_stream_start") streamId = event.data.stream_id
      return render(event)
    })

  const run = (
    connection: Connection,
    events: Stream.Stream<ChatStreamEvent, StreamError>,
    attempt: number
  ): Effect.Effect<Connection, StreamError, Scope.Scope> =>
    follow(events).pipe(
      Effect.as(connection),
      Effect.catchTag("RpcClientError", (error) => {
        // Before the start event there is nothing to resume, and the attempts are bounded.
        if (streamId === undefined || attempt > RESUME_ATTEMPTS) return Effect.fail(error)
        const id = streamId
        return Effect.gen(function*() {
          yield* connection.close
          yield* Effect.sleep(backoff(attempt))
          yield* Console.log(`\n(connection dropped after seq ${lastSeq}; resuming stream ${id} after ${lastSeq}, attempt ${attempt})`)
          const next = yield* connect
          return yield* run(next, next.client.Resume({ stream_id: id, after: lastSeq }), attempt + 1)
        })
      })
    )

  return run(first, first.client.ChatCompletionStream({ ...request, resumable: true }), 1)
}

// ---------------------------------------------------------------------------
// the program

const clip = (text: string, width = 120): string => {
  const flat = text.replace(/\s*\n\s*/g, " ")
  return flat.length > width ? `${flat.slice(0, width - 1)}…` : flat
}

const write = (text: string) => Effect.sync(() => process.stdout.write(text))

const program = Effect.gen(function*() {
  yield* Console.log(`Connecting to ${options.url.replace(/token=[^&]+/, "token=***")}`)
  let connection = yield* connect

  const pong = yield* connection.client.Ping()
  yield* Console.log(`Ping → pong at ${pong.timestamp}`)

  const completion = yield* connection.client.ChatCompletion({ messages: [{ role: "user", content: "Hello!" }] })
  yield* Console.log(
    `ChatCompletion → ${completion.model}: ${clip(JSON.stringify(completion.choices[0]?.message.content ?? null))}`
  )

  // Events arrive as they are produced: write text deltas inline, one line for everything else.
  let chunks = 0
  yield* write("ChatCompletionStream → ")
  connection = yield* streamResumably(
    connection,
    { messages: [{ role: "user", content: "What's the weather in Tokyo?" }], tools: "registry", auto_execute_tools: true },
    (event) => {
      switch (event._tag) {
        case "chat_completion_stream_start":
          return Console.log(`(resumable as ${event.data.stream_id})`)
        case "chat_completion_stream_chunk": {
          const text = event.data.choices.map((choice) => choice.delta.content ?? "").join("")
          const drop = text !== "" && ++chunks === options.dropAfter
          return write(text).pipe(
            Effect.zipRight(drop ? Effect.sync(() => newestSocket?.close(4000, "dropped on purpose")) : Effect.void),
            Effect.zipRight(drop ? write(`\n(--drop-after ${options.dropAfter}: closed the connection on purpose)`) : Effect.void)
          )
        }
        case "tool_execution":
          return write(
            `\n  tool_execution ${event.data.tool_call.function.name}(${event.data.tool_call.function.arguments})` +
              ` → ${clip(event.data.result.content, 80)}\n  `
          )
        case "chat_completion_stream_end":
          return Console.log(
            `\n  chat_completion_stream_end finish=${event.data.finish_reason} tokens=${event.data.usage?.total_tokens ?? "?"}`
          )
      }
    }
  )
  const { client } = connection

  const embedding = yield* client.Embedding({ input: ["The quick brown fox", "jumps over the lazy dog"] })
  yield* Console.log(
    `Embedding → ${embedding.data.length} vectors of ${embedding.data[0]?.embedding.length ?? 0} dims (${embedding.model})`
  )

  const tools = yield* client.ToolsList()
  yield* Console.log(`ToolsList → ${tools.tools.map((tool) => tool.name).join(", ")}`)

  const result = yield* client.ToolExecute({
    tool_call: {
      id: "call_1",
      type: "function",
      function: { name: "calculator", arguments: JSON.stringify({ expression: "2 + 3 * 4" }) }
    }
  })
  yield* Console.log(`ToolExecute → calculator: ${result.content} (is_error=${result.is_error})`)

  // Errors are typed: the offline model answers this exact text with a RateLimitError.
  yield* client.ChatCompletion({ messages: [{ role: "user", content: "offline:fail:rate_limit" }] }).pipe(
    Effect.flatMap(() => Console.log("ChatCompletion → answered (a real model does not fail on request)")),
    Effect.catchTag("RateLimitError", (error) =>
      Console.log(
        `ChatCompletion → RateLimitError handled: category=${error.category} retryable=${error.retryable}` +
          ` code=${error.code} (${error.message})`
      ))
  )

  yield* Console.log("Done: every RPC answered")
})

program.pipe(
  // Bounded, so that an unreachable server ends in a failure rather than a wait.
  Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error("timed out after 30 s") }),
  // Every connection is closed with the program's scope.
  Effect.scoped,
  NodeRuntime.runMain
)
