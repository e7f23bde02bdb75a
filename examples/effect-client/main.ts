/** An Effect client for AIBase's /rpc endpoint: every RPC through `RpcClient.make(AiBaseRpcs)`, with typed errors. */
//
//   node --import tsx examples/effect-client/main.ts [host:port] [--token TOKEN]
//
// Defaults to localhost:8080; the token can also come from AIBASE_TOKEN.
import { NodeRuntime, NodeSocket } from "@effect/platform-node"
import { RpcClient, RpcSerialization } from "@effect/rpc"
import { AiBaseRpcs } from "aibase/protocol"
import { Console, Effect, Layer, Stream } from "effect"

// ---------------------------------------------------------------------------
// arguments

const rpcUrl = (args: ReadonlyArray<string>): string => {
  let target = "localhost:8080"
  let token = process.env["AIBASE_TOKEN"]
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    if (arg === "--token") token = args[++i]
    else if (arg !== undefined) target = arg
  }
  const url = new URL("/rpc", target.includes("://") ? target.replace(/^http/, "ws") : `ws://${target}`)
  // Node's WebSocket cannot be given headers here, so the token goes in the query (the server accepts both).
  if (token !== undefined && token !== "") url.searchParams.set("token", token)
  return url.href
}

const url = rpcUrl(process.argv.slice(2))

// The socket, the RPC protocol on it, and JSON serialization (it must match the server's).
const ProtocolLive = RpcClient.layerProtocolSocket().pipe(
  Layer.provide(NodeSocket.layerWebSocket(url)),
  Layer.provide(RpcSerialization.layerJson)
)

const clip = (text: string, width = 120): string => {
  const flat = text.replace(/\s*\n\s*/g, " ")
  return flat.length > width ? `${flat.slice(0, width - 1)}…` : flat
}

const write = (text: string) => Effect.sync(() => process.stdout.write(text))

// ---------------------------------------------------------------------------
// the program

const program = Effect.gen(function*() {
  yield* Console.log(`Connecting to ${url.replace(/token=[^&]+/, "token=***")}`)
  const client = yield* RpcClient.make(AiBaseRpcs)

  const pong = yield* client.Ping()
  yield* Console.log(`Ping → pong at ${pong.timestamp}`)

  const completion = yield* client.ChatCompletion({ messages: [{ role: "user", content: "Hello!" }] })
  yield* Console.log(
    `ChatCompletion → ${completion.model}: ${clip(JSON.stringify(completion.choices[0]?.message.content ?? null))}`
  )

  // Events arrive as they are produced: write text deltas inline, one line for everything else.
  yield* write("ChatCompletionStream → ")
  yield* client.ChatCompletionStream({
    messages: [{ role: "user", content: "What's the weather in Tokyo?" }],
    tools: "registry",
    auto_execute_tools: true
  }).pipe(
    Stream.runForEach((event) => {
      switch (event._tag) {
        case "chat_completion_stream_start":
          return Console.log(`(resumable as ${event.data.stream_id})`)
        case "chat_completion_stream_chunk":
          return write(event.data.choices.map((choice) => choice.delta.content ?? "").join(""))
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
    })
  )

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
  // The protocol layer must outlive every call, so it is provided to the whole scoped program.
  Effect.scoped,
  Effect.provide(ProtocolLive),
  NodeRuntime.runMain
)
