/**
 * The one implementation of every AIBase request. Both transports serve
 * these handlers: /rpc through RpcServer, /ws through the envelope adapter.
 */
import { Clock, DateTime, Effect, Layer } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { OpenAi } from "../openai/OpenAi.js"
import { AiBaseRpcs } from "../protocol/Rpcs.js"
import { ToolRegistry } from "../tools/ToolRegistry.js"
import { Chat } from "./Chat.js"

export const layer = AiBaseRpcs.toLayer(Effect.gen(function*() {
  const config = yield* AppConfig
  const openai = yield* OpenAi
  const registry = yield* ToolRegistry
  const chat = yield* Chat

  return AiBaseRpcs.of({
    Ping: () =>
      Clock.currentTimeMillis.pipe(
        Effect.map((millis) => ({ timestamp: DateTime.formatIso(DateTime.unsafeMake(millis)) }))
      ),
    ChatCompletion: (request) => chat.complete(request),
    ChatCompletionStream: (request) => chat.stream(request),
    Embedding: (request) =>
      openai.createEmbedding({ ...request, model: request.model ?? config.openai.embeddingModel }),
    ToolsList: () => Effect.map(registry.definitions, (tools) => ({ tools })),
    ToolExecute: ({ tool_call }) => registry.execute(tool_call)
  })
})).pipe(Layer.provide(Chat.layer))
