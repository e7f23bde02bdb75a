/**
 * The adapter between /rpc's upgrades and RpcServer: a `SocketServer` that
 * RpcServer's socket protocol runs on, fed with the sockets the route
 * upgrades instead of listening by itself.
 */
import { type Socket, SocketServer } from "@effect/platform"
import { Context, Deferred, Effect, Layer } from "effect"

/** The sockets the route upgrades, handed to RpcServer. */
export class RpcSockets extends Context.Tag("aibase/RpcSockets")<RpcSockets, {
  /** Serves one upgraded socket until it closes. */
  readonly serve: (socket: Socket.Socket) => Effect.Effect<void>
}>() {}

/** `RpcSockets` and the `SocketServer` behind it; `path` is only the address the SocketServer reports. */
export const layer = (path: string): Layer.Layer<SocketServer.SocketServer | RpcSockets> =>
  Layer.effectContext(Effect.gen(function*() {
    // RpcServer hands over its socket handler once it runs; sockets upgraded before that wait for it.
    const handler = yield* Deferred.make<(socket: Socket.Socket) => Effect.Effect<void>>()
    const server = SocketServer.SocketServer.of({
      address: { _tag: "UnixAddress", path },
      run: (handle) =>
        Effect.gen(function*() {
          const context = yield* Effect.context<Effect.Effect.Context<ReturnType<typeof handle>>>()
          yield* Deferred.succeed(handler, (socket) =>
            handle(socket).pipe(
              Effect.provide(context),
              Effect.catchAllCause((cause) => Effect.logDebug("RPC socket ended with an error", cause))
            ))
          return yield* Effect.never
        })
    })
    const sockets = RpcSockets.of({
      serve: (socket) => Effect.flatMap(Deferred.await(handler), (serve) => serve(socket))
    })
    return Context.make(SocketServer.SocketServer, server).pipe(Context.add(RpcSockets, sockets))
  }))
