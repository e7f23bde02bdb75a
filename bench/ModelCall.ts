/**
 * The model call alone, measured in one process: CPU per upstream request
 * as the floor makes it (FloorClient: a bare `node:http` POST, the body
 * parsed as JSON) and as AIBase makes it (OpenAiSdk: the openai SDK over
 * NodeFetch, each chunk checked against its Schema, interruptible), against
 * the same fake upstream. `npm run bench -- --only model-call` runs it as a
 * child and subtracts it from the whole request, to show how much of
 * AIBase's cost per request is the model call.
 *
 * Environment: OPENAI_BASE_URL, MODEL_CALL_REPS (default 3),
 * MODEL_CALL_COUNT (calls per repetition and side, default 2000). Prints one
 * JSON line: CPU µs per call for each repetition, by kind and side.
 */
import { Duration, Effect, Exit, Redacted, Scope } from "effect"
import { makePost } from "./FloorClient.js"
import * as OpenAiSdk from "../src/openai/OpenAiSdk.js"

const baseUrl = process.env["OPENAI_BASE_URL"] ?? "http://127.0.0.1:8000/v1"
const reps = Number(process.env["MODEL_CALL_REPS"] ?? 3)
const count = Number(process.env["MODEL_CALL_COUNT"] ?? 2_000)
const CONCURRENCY = 10
const WARM_UP = 1_000
/** One content chunk at once (see FakeUpstream): the call's own cost, not its chunks'. */
const MODEL = "fake:chunks=1,interval=0,delay=0"
const messages = [{ role: "user" as const, content: "Write a few words." }]

const post = makePost({ baseUrl, apiKey: "sk-bench", http: "node" })

/** The floor's call: POST, split the event stream into lines, parse each chunk. */
const floorStream = () =>
  new Promise<void>((resolve, reject) => {
    let buffered = ""
    const line = (text: string) => {
      if (text.startsWith("data: ") && text !== "data: [DONE]") JSON.parse(text.slice(6))
    }
    post("/chat/completions", JSON.stringify({ model: MODEL, messages, stream: true, stream_options: { include_usage: true } }), {
      onData: (text) => {
        buffered += text
        let start = 0
        let end: number
        while ((end = buffered.indexOf("\n", start)) !== -1) {
          line(buffered.slice(start, end))
          start = end + 1
        }
        buffered = buffered.slice(start)
      },
      onEnd: () => resolve(),
      onError: (message) => reject(new Error(message))
    })
  })

const floorEmbedding = () =>
  new Promise<void>((resolve, reject) => {
    let text = ""
    post("/embeddings", JSON.stringify({ model: "text-embedding-3-small", input: "hello" }), {
      onData: (piece) => (text += piece),
      onEnd: () => {
        JSON.parse(text)
        resolve()
      },
      onError: (message) => reject(new Error(message))
    })
  })

/** Makes `n` calls, `CONCURRENCY` at a time. */
const calls = async (call: () => Promise<void>, n: number): Promise<void> => {
  let next = 0
  const worker = async () => {
    while (next++ < n) await call()
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
}

/** CPU µs per call over `count` calls. */
const measure = async (call: () => Promise<void>): Promise<number> => {
  const start = process.cpuUsage()
  await calls(call, count)
  const used = process.cpuUsage(start)
  return (used.user + used.system) / count
}

const main = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const openai = yield* OpenAiSdk.make({
    apiKey: Redacted.make("sk-bench"),
    baseUrl,
    timeout: Duration.seconds(30),
    maxRetries: 2
  }).pipe(Scope.extend(scope))
  const push = openai.pushChatCompletion
  if (push === undefined) return yield* Effect.dieMessage("OpenAiSdk has no push form")
  const aibaseStream = () => Effect.runPromise(push({ model: MODEL, messages })(() => undefined))
  const aibaseEmbedding = () =>
    Effect.runPromise(Effect.asVoid(openai.createEmbedding({ model: "text-embedding-3-small", input: "hello" })))
  const results = {
    stream: { floor: [] as Array<number>, aibase: [] as Array<number> },
    embedding: { floor: [] as Array<number>, aibase: [] as Array<number> }
  }
  // Compiled code and pooled connections first, for every call measured.
  for (const call of [floorStream, aibaseStream, floorEmbedding, aibaseEmbedding]) yield* Effect.promise(() => calls(call, WARM_UP))
  for (let rep = 0; rep < reps; rep++) {
    // The order alternates between repetitions, as the other scenarios'.
    const sides = rep % 2 === 0 ? (["floor", "aibase"] as const) : (["aibase", "floor"] as const)
    for (const side of sides) {
      results.stream[side].push(yield* Effect.promise(() => measure(side === "floor" ? floorStream : aibaseStream)))
      results.embedding[side].push(yield* Effect.promise(() => measure(side === "floor" ? floorEmbedding : aibaseEmbedding)))
    }
  }
  yield* Scope.close(scope, Exit.void)
  return results
})

Effect.runPromise(main).then(
  (results) => {
    console.log(JSON.stringify(results))
    process.exit(0)
  },
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
