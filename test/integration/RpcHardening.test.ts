/**
 * /rpc against malformed and hostile frames, sent with a raw `ws` client in
 * @effect/rpc's JSON serialization: no frame closes the connection, a request
 * whose id can be read gets an answer (typed `ValidationError` for an invalid
 * payload or frame), frames without a readable id are dropped, and a
 * connection's in-flight count is held until its request has really stopped.
 */
import { Rpc, RpcGroup } from "@effect/rpc"
import { NodeSocket } from "@effect/platform-node"
import { RpcClient, RpcSerialization } from "@effect/rpc"
import { describe, expect, layer } from "@effect/vitest"
import { Cause, Context, Deferred, Duration, Effect, Exit, Layer, Option, Schema } from "effect"
import type { AppConfig } from "../../src/config/AppConfig.js"
import { AiBaseError, ValidationError } from "../../src/protocol/Errors.js"
import { AiBaseRpcs } from "../../src/protocol/Rpcs.js"
import * as AiBaseServer from "../../src/server/AiBaseServer.js"
import * as Tool from "../../src/tools/Tool.js"
import type { ToolRegistry } from "../../src/tools/ToolRegistry.js"
import * as TestServer from "../support/TestServer.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

// ---------------------------------------------------------------------------
// A raw client speaking @effect/rpc's JSON messages.

const ExitMessage = Schema.Struct({ _tag: Schema.Literal("Exit"), requestId: Schema.String, exit: Schema.Unknown })
const DefectMessage = Schema.Struct({ _tag: Schema.Literal("Defect"), defect: Schema.Unknown })
const isExitMessage = Schema.is(ExitMessage)
const isDefectMessage = Schema.is(DefectMessage)
const isChunkMessage = Schema.is(Schema.Struct({ _tag: Schema.Literal("Chunk"), requestId: Schema.String }))

interface RawRpc {
  readonly client: WsClient.WsClient
  /** Sends a message (objects as JSON, strings as they are). */
  readonly send: (message: unknown) => void
  /** Every message received so far. */
  readonly received: ReadonlyArray<unknown>
  /** Waits for a received message `find` returns a value for; fails if the connection closes first. */
  readonly waitFor: <A>(find: (message: unknown) => A | undefined, timeout?: Duration.DurationInput) => Effect.Effect<A, string>
  /** The encoded Exit of request `id`. */
  readonly exitOf: (id: string) => Effect.Effect<unknown, string>
}

const request = (id: unknown, tag: string, payload: unknown = {}, headers: unknown = []) => ({
  _tag: "Request",
  id,
  tag,
  payload,
  headers
})

const connectRaw = Effect.gen(function*() {
  const { port } = yield* TestServer.urls
  const client = yield* WsClient.connect(`ws://127.0.0.1:${port}/rpc`)
  // WsClient parses every frame into `frames` (typed for /ws; here they are RPC messages).
  const received: ReadonlyArray<unknown> = client.frames
  // RpcServer sends a stream's next chunk once the client acknowledged the previous one.
  client.raw.on("message", () => {
    const last = received.at(-1)
    if (isChunkMessage(last)) client.raw.send(JSON.stringify({ _tag: "Ack", requestId: last.requestId }))
  })
  const waitFor = <A>(find: (message: unknown) => A | undefined, timeout: Duration.DurationInput = "5 seconds") =>
    Effect.async<A, string>((resume) => {
      const stop = () => {
        client.raw.off("message", check)
        client.raw.off("close", check)
      }
      const done = (result: Effect.Effect<A, string>) => {
        stop()
        resume(result)
      }
      function check() {
        for (const message of received) {
          const found = find(message)
          if (found !== undefined) return done(Effect.succeed(found))
        }
        if (client.raw.readyState !== client.raw.OPEN) done(Effect.fail("the connection closed"))
      }
      client.raw.on("message", check)
      client.raw.on("close", check)
      check()
      return Effect.sync(stop)
    }).pipe(Effect.timeoutFail({ duration: timeout, onTimeout: () => `no matching message within ${Duration.format(timeout)}` }))
  const rpc: RawRpc = {
    client,
    send: (message) => client.raw.send(typeof message === "string" ? message : JSON.stringify(message)),
    received,
    waitFor,
    exitOf: (id) => waitFor((m) => (isExitMessage(m) && m.requestId === id ? m.exit : undefined))
  }
  return rpc
})

/** Pings with `id` and expects a successful answer: the connection is open and serving. */
const expectServing = (rpc: RawRpc, id: string) =>
  Effect.gen(function*() {
    rpc.send(request(id, "Ping"))
    expect(yield* rpc.exitOf(id)).toMatchObject({ _tag: "Success", value: { timestamp: expect.any(String) } })
    expect(rpc.client.raw.readyState).toBe(rpc.client.raw.OPEN)
  })

/** Decodes an encoded Exit with the group's own exit schema for `tag`, as RpcClient does. */
const decodeExit = (tag: string, encoded: unknown) => {
  const rpc = AiBaseRpcs.requests.get(tag)
  if (rpc === undefined) throw new Error(`no rpc ${tag}`)
  return Schema.decodeUnknownSync(Rpc.exitSchema(rpc))(encoded)
}

const typedFailure = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()

// ---------------------------------------------------------------------------
// A tool that takes until the test says so to stop once interrupted.

class Gate extends Context.Tag("test/RpcHardening/Gate")<Gate, {
  readonly started: Deferred.Deferred<void>
  readonly stopping: Deferred.Deferred<void>
  readonly release: Deferred.Deferred<void>
}>() {
  static readonly layer = Layer.effect(
    Gate,
    Effect.all({ started: Deferred.make<void>(), stopping: Deferred.make<void>(), release: Deferred.make<void>() })
  )
}

const slowToStop = Tool.make({
  name: "slow_to_stop",
  description: "Test tool: runs until interrupted, then stops only once the test releases it.",
  parameters: Schema.Struct({}),
  execute: () =>
    Effect.flatMap(Gate, (gate) =>
      Deferred.succeed(gate.started, undefined).pipe(
        Effect.zipRight(Effect.never),
        Effect.onInterrupt(() => Deferred.succeed(gate.stopping, undefined).pipe(Effect.zipRight(Deferred.await(gate.release))))
      ))
})

const toolsWithGate: Layer.Layer<ToolRegistry | Gate, never, AppConfig> = Tool.toLayer(slowToStop).pipe(
  Layer.provideMerge(Layer.merge(AiBaseServer.layerTools, Gate.layer))
)

// ---------------------------------------------------------------------------

describe("/rpc with malformed frames", () => {
  layer(TestServer.layer({ env: { OFFLINE_WORD_DELAY_MS: "40" } }), { excludeTestServices: true })("offline model", (it) => {
    it.scoped("a frame of null (or any non-message) is dropped with a Defect; the connection stays open", () =>
      Effect.gen(function*() {
        const rpc = yield* connectRaw
        for (const frame of ["null", "[]", "5", "\"x\"", "true", "{\"_tag\":{\"toString\":1}}", "{"]) rpc.send(frame)
        yield* expectServing(rpc, "1")
        const defects = rpc.received.filter(isDefectMessage)
        expect(defects).toHaveLength(7)
      }))

    it.scoped("an Interrupt for an unknown or unreadable id is ignored", () =>
      Effect.gen(function*() {
        const rpc = yield* connectRaw
        for (const requestId of ["999", "r1", "1.5", null, 1.5, {}, undefined]) rpc.send({ _tag: "Interrupt", requestId })
        rpc.send({ _tag: "Ack", requestId: "x" })
        yield* expectServing(rpc, "1")
        expect(rpc.received).toHaveLength(1)
      }))

    it.scoped("a request whose id is not numeric gets a Defect; the connection stays open", () =>
      Effect.gen(function*() {
        const rpc = yield* connectRaw
        rpc.send(request("abc", "Ping"))
        yield* rpc.waitFor((m) => (isDefectMessage(m) ? m : undefined))
        // An id too long to be one is refused without converting it.
        rpc.send(request("9".repeat(200_000), "Ping"))
        rpc.send(request(undefined, "Ping"))
        yield* expectServing(rpc, "1")
        expect(rpc.received.filter(isDefectMessage)).toHaveLength(3)
      }))

    it.scoped("a request with malformed headers (\"headers\":[null]) fails with a typed invalid_frame ValidationError", () =>
      Effect.gen(function*() {
        const rpc = yield* connectRaw
        const malformed: ReadonlyArray<unknown> = [[null], 5, "x", null, [[1, "a"]], [[]], [["a"]], { a: 1 }]
        for (const [index, headers] of malformed.entries()) {
          rpc.send(request(String(index + 10), "Ping", {}, headers))
          const exit = decodeExit("Ping", yield* rpc.exitOf(String(index + 10)))
          const error = typedFailure(exit)
          expect(Option.isSome(error) && error.value instanceof ValidationError).toBe(true)
          if (Option.isSome(error) && error.value instanceof ValidationError) expect(error.value.code).toBe("invalid_frame")
        }
        // Well-formed headers still work, as pairs or as an object.
        rpc.send(request("20", "Ping", {}, [["x-a", "1"]]))
        rpc.send(request("21", "Ping", {}, { "x-a": "1" }))
        rpc.send(request("22", "Ping", {}, undefined))
        for (const id of ["20", "21", "22"]) expect(yield* rpc.exitOf(id)).toMatchObject({ _tag: "Success" })
        yield* expectServing(rpc, "1")
      }))

    it.scoped("an invalid payload fails with a typed invalid_payload ValidationError, encoded like a handler's failure", () =>
      Effect.gen(function*() {
        const rpc = yield* connectRaw
        rpc.send(request("1", "ChatCompletion", { messages: [] }))
        const encoded = yield* rpc.exitOf("1")
        // The same shape as a typed failure of the handler itself.
        rpc.send(request("2", "ChatCompletion", { messages: [{ role: "user", content: "offline:fail:rate_limit" }] }))
        const handlerFailure = yield* rpc.exitOf("2")
        expect(handlerFailure).toMatchObject({ _tag: "Failure", cause: { _tag: "Fail", error: { _tag: "RateLimitError" } } })
        expect(encoded).toMatchObject({
          _tag: "Failure",
          cause: { _tag: "Fail", error: { _tag: "ValidationError", code: "invalid_payload" } }
        })
        const error = typedFailure(decodeExit("ChatCompletion", encoded))
        expect(Option.isSome(error) && error.value instanceof ValidationError).toBe(true)
        if (Option.isSome(error) && error.value instanceof ValidationError) {
          expect(error.value.message).toContain("payload.messages")
        }
        // A streamed request and a missing payload too.
        rpc.send(request("3", "ChatCompletionStream", { messages: "nope" }))
        rpc.send({ _tag: "Request", id: "4", tag: "Embedding", headers: [] })
        for (const id of ["3", "4"]) {
          expect(yield* rpc.exitOf(id)).toMatchObject({
            _tag: "Failure",
            cause: { _tag: "Fail", error: { _tag: "ValidationError", code: "invalid_payload" } }
          })
        }
        expect(rpc.received.filter(isDefectMessage)).toHaveLength(0)
        yield* expectServing(rpc, "5")
      }))

    it.scoped("an RpcClient sending an invalid payload gets the typed ValidationError", () =>
      Effect.gen(function*() {
        const { port } = yield* TestServer.urls
        // The server's ChatCompletion, with a client that does not check payloads.
        const Loose = RpcGroup.make(Rpc.make("ChatCompletion", { payload: Schema.Unknown, error: AiBaseError }))
        const protocol = yield* Layer.build(
          RpcClient.layerProtocolSocket({ retryTransientErrors: false }).pipe(
            Layer.provide(NodeSocket.layerWebSocket(`ws://127.0.0.1:${port}/rpc`)),
            Layer.provide(RpcSerialization.layerJson)
          )
        )
        const client = yield* RpcClient.make(Loose, { disableTracing: true }).pipe(Effect.provide(protocol))
        const error = yield* Effect.flip(client.ChatCompletion({ messages: [{ role: "bogus", content: "hi" }] }))
        expect(error).toBeInstanceOf(ValidationError)
        if (error instanceof ValidationError) expect(error.code).toBe("invalid_payload")
      }))

    it.scoped("a request reusing the id of one in flight is refused with a Defect; both ids stay usable", () =>
      Effect.gen(function*() {
        const rpc = yield* connectRaw
        rpc.send(request("1", "ChatCompletionStream", { messages: [{ role: "user", content: "a long story please" }] }))
        yield* rpc.waitFor((m) => (isChunkMessage(m) ? m : undefined))
        rpc.send(request("1", "Ping"))
        const defect = yield* rpc.waitFor((m) => (isDefectMessage(m) ? m.defect : undefined))
        expect(JSON.stringify(defect)).toContain("already in flight")
        // The stream ends normally, and its id can be used again.
        expect(yield* rpc.exitOf("1")).toEqual({ _tag: "Success" })
        const before = rpc.received.length
        rpc.send(request("1", "Ping"))
        yield* rpc.waitFor((m) => (rpc.received.indexOf(m) >= before && isExitMessage(m) ? m : undefined))
        expect(rpc.received.slice(before)).toMatchObject([{ _tag: "Exit", requestId: "1", exit: { _tag: "Success" } }])
      }))

    it.scoped("an Eof does not silence the requests that follow it", () =>
      Effect.gen(function*() {
        const rpc = yield* connectRaw
        rpc.send(request("1", "ChatCompletionStream", { messages: [{ role: "user", content: "a long story please" }] }))
        yield* rpc.waitFor((m) => (isChunkMessage(m) ? m : undefined))
        rpc.send({ _tag: "Eof" })
        yield* expectServing(rpc, "2")
      }))
  })

  layer(TestServer.withTools(toolsWithGate, { env: { WS_MAX_IN_FLIGHT: "1" } }), { excludeTestServices: true })(
    "in-flight accounting",
    (it) => {
      it.scoped("a request's in-flight slot is held until its fiber has really stopped", () =>
        Effect.gen(function*() {
          const gate = yield* Gate
          const rpc = yield* connectRaw
          rpc.send(request("1", "ToolExecute", {
            tool_call: { id: "c1", type: "function", function: { name: "slow_to_stop", arguments: "{}" } }
          }))
          yield* Wait.awaitEvent(Deferred.await(gate.started), { message: "the tool to start" })
          rpc.send({ _tag: "Interrupt", requestId: "1" })
          yield* Wait.awaitEvent(Deferred.await(gate.stopping), { message: "the tool to see its interruption" })
          // The tool is still stopping: the connection's one slot is still taken.
          rpc.send(request("2", "Ping"))
          expect(yield* rpc.exitOf("2")).toMatchObject({
            _tag: "Failure",
            cause: { _tag: "Fail", error: { _tag: "OverloadedError" } }
          })
          yield* Deferred.succeed(gate.release, undefined)
          expect(yield* rpc.exitOf("1")).toMatchObject({ _tag: "Failure" })
          yield* expectServing(rpc, "3")
        }))
    }
  )
})
