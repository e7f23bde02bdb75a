/**
 * A typed @effect/rpc client of AIBase's group for tests, on /rpc at `url`,
 * living as long as the current scope.
 */
import { NodeSocket } from "@effect/platform-node"
import { RpcClient, RpcSerialization } from "@effect/rpc"
import { AiBaseRpcs } from "aibase"
import { Effect, Layer } from "effect"

export const rpcClient = (url: string) =>
  Effect.gen(function*() {
    const protocol = yield* Layer.build(
      RpcClient.layerProtocolSocket({ retryTransientErrors: false }).pipe(
        Layer.provide(NodeSocket.layerWebSocket(url)),
        Layer.provide(RpcSerialization.layerJson)
      )
    )
    return yield* RpcClient.make(AiBaseRpcs, { disableTracing: true }).pipe(Effect.provide(protocol))
  })
