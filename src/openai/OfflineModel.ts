/**
 * The built-in offline model: a deterministic, network-free `OpenAi` that
 * serves `npm start` without a key and doubles as the test model. This
 * module assembles the service from its parts in `offline/`: text
 * (`Text`), tool calling (`Tools`), embeddings (`Embeddings`), failures on
 * request (`Failures`) and OpenAI's response shapes (`Completions`).
 */
import { Clock, Duration, Effect, Layer, Ref, Stream } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import type { ChatCompletionChunk, UpstreamChatRequest, Usage } from "../protocol/Chat.js"
import type { AiBaseError } from "../protocol/Errors.js"
import type { ToolCall } from "../protocol/Tools.js"
import * as Completions from "./offline/Completions.js"
import * as Embeddings from "./offline/Embeddings.js"
import { failIfRequested } from "./offline/Failures.js"
import { promptTokens, userTexts } from "./offline/Text.js"
import { completionTokens, plan } from "./offline/Tools.js"
import { OpenAi } from "./OpenAi.js"

export { embed } from "./offline/Embeddings.js"

export interface OfflineModelOptions {
  /** The pause between streamed words (OFFLINE_WORD_DELAY_MS). Default 15 ms; zero streams at once. */
  readonly wordDelay?: Duration.DurationInput | undefined
  /** The length of embedding vectors (OFFLINE_EMBEDDING_DIMENSIONS). Default 256. */
  readonly embeddingDimensions?: number | undefined
}

export const make = (options: OfflineModelOptions = {}) => Effect.gen(function*() {
  const embeddingDimensions = options.embeddingDimensions ?? 256
  const completions = yield* Ref.make(0)
  const toolCalls = yield* Ref.make(0)
  const wordDelay = Duration.decode(options.wordDelay ?? Duration.millis(15))

  /** Checks the failure trigger, then plans the reply and gives it ids and a timestamp. */
  const respond = Effect.fnUntraced(function*(request: UpstreamChatRequest) {
    yield* failIfRequested(userTexts(request.messages))
    const reply = plan(request)
    const id = `chatcmpl-offline-${yield* Ref.updateAndGet(completions, (n) => n + 1)}`
    const created = Math.floor((yield* Clock.currentTimeMillis) / 1000)
    const calls: Array<ToolCall> = []
    if (reply._tag === "ToolCalls") {
      for (const planned of reply.calls) {
        const n = yield* Ref.updateAndGet(toolCalls, (k) => k + 1)
        calls.push({ id: `call_offline_${n}`, type: "function", function: { name: planned.name, arguments: planned.arguments } })
      }
    }
    const prompt = promptTokens(request)
    const completion = completionTokens(reply)
    const usage: Usage = { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
    const answer: Completions.Answer = { reply, id, created, calls, usage }
    return answer
  })

  // Sleeping only between pieces (and not at all with a zero delay) keeps
  // delay-0 streams synchronous; Effect.sleep makes every gap interruptible.
  const paced = <A>(pieces: ReadonlyArray<A>): Stream.Stream<A> =>
    Duration.isZero(wordDelay)
      ? Stream.fromIterable(pieces)
      : Stream.fromIterable(pieces).pipe(
        Stream.zipWithIndex,
        Stream.mapEffect(([piece, index]) => (index === 0 ? Effect.succeed(piece) : Effect.as(Effect.sleep(wordDelay), piece)))
      )

  const streamChatCompletion = (request: UpstreamChatRequest): Stream.Stream<ChatCompletionChunk, AiBaseError> =>
    Stream.unwrap(Effect.map(respond(request), (answer) => {
      const { head, paced: pieces, tail } = Completions.chunks(request, answer)
      return Stream.fromIterable(head).pipe(Stream.concat(paced(pieces)), Stream.concat(Stream.fromIterable(tail)))
    }))

  return OpenAi.of({
    provider: "offline",
    baseUrl: undefined,
    createChatCompletion: (request) => Effect.map(respond(request), (answer) => Completions.completion(request, answer)),
    streamChatCompletion,
    createEmbedding: (request) =>
      Effect.zipRight(
        failIfRequested(Embeddings.inputsOf(request)),
        Effect.sync(() => Embeddings.respond(request, embeddingDimensions))
      )
  })
})

/** The offline model as the `OpenAi` service. */
export const layer = (options: OfflineModelOptions = {}): Layer.Layer<OpenAi> => Layer.effect(OpenAi, make(options))

/** OFFLINE_WORD_DELAY_MS and OFFLINE_EMBEDDING_DIMENSIONS, from AppConfig (the standalone server's assembly). */
export const layerFromAppConfig: Layer.Layer<OpenAi, never, AppConfig> = Layer.unwrapEffect(
  Effect.map(AppConfig, ({ offline }) => layer(offline))
)
