/**
 * The /ws envelope protocol as an adapter over the RpcGroup's handlers.
 * Each request type gets a route built from its Rpc: the payload Schema
 * decodes, the handler runs, and the success Schema encodes the answer
 * straight into a JSON frame. Adding an Rpc to the group and a name to
 * `WireNames` is all it takes to serve it on /ws.
 */
import { Headers } from "@effect/platform"
import { Rpc, RpcSchema } from "@effect/rpc"
import { Cause, Context, Effect, Either, Exit, identity, Mailbox, Option, type ParseResult, Schema, Stream } from "effect"
import { isShutdown, stoppedAtShutdown } from "../hub/Hub.js"
import { type AiBaseError, CancelledError, InternalError, isAiBaseError, ValidationError } from "../protocol/Errors.js"
import { CANCEL, CANCEL_RESPONSE, CancelResponse, ErrorFrame, errorFrame, RequestEnvelope } from "../protocol/Frames.js"
import { jsonDepthExceeds, MAX_JSON_DEPTH, tooDeep } from "../protocol/JsonDepth.js"
import { type AiBaseRpc, AiBaseRpcs, PLAIN_EVENTS, type WireName, WireNames } from "../protocol/Rpcs.js"
import * as RawJson from "../protocol/RawJson.js"
import { decodeSafely, validationError } from "../protocol/Validation.js"
import { Ledger, RECORDED_RPCS } from "../ledger/Ledger.js"
import * as RequestRecord from "../ledger/RequestRecord.js"
import { finishRecord, Telemetry } from "../observability/Telemetry.js"
import { type Caller, isDisconnect } from "../ledger/RequestRecord.js"
import { seqOfFinalError } from "../resume/ResumableStreams.js"
import { PushHandlers, type StreamEvent } from "../rpc/Handlers.js"

/**
 * Hands an encoded frame to the connection; `final` marks a request's last
 * frame. A returned promise asks the caller to wait before producing more
 * (the client is not reading fast enough).
 */
export type Emit = (frame: string, final: boolean) => Promise<void> | undefined

export interface Route {
  readonly type: string
  /** Decodes the payload, runs the request to completion and emits its frames. */
  readonly run: (requestId: string, payload: unknown, emit: Emit, caller: Caller) => Effect.Effect<void, AiBaseError>
}

export interface Envelope {
  readonly routes: ReadonlyMap<string, Route>
  /** Reads a text frame up to its route; failures name the request id when one could be read. */
  readonly read: (text: string) => Either.Either<Incoming, { readonly requestId: string | null; readonly error: ValidationError }>
  readonly encodeError: (requestId: string | null, error: AiBaseError) => string
  readonly encodeCancelResponse: (requestId: string, data: typeof CancelResponse.Type) => string
}

export interface Incoming {
  readonly type: string
  readonly requestId: string
  readonly payload: unknown
}

const decodeEnvelope = Schema.decodeUnknownEither(RequestEnvelope)
const encodeErrorFrame = Schema.encodeSync(ErrorFrame)

/** A frame around data that is already in its JSON form (with its `seq` when it is a stream's). */
const frame = (type: string, requestId: string, data: unknown, seq?: number): string =>
  `{"type":${JSON.stringify(type)},"request_id":${JSON.stringify(requestId)},${seq === undefined ? "" : `"seq":${seq},`}"data":${
    JSON.stringify(data)
  }}`

/** A frame around data given as JSON text. */
const frameOfJson = (type: string, requestId: string, json: string): string =>
  `{"type":${JSON.stringify(type)},"request_id":${JSON.stringify(requestId)},"data":${json}}`

const encodeError = (requestId: string | null, error: AiBaseError, seq?: number): string =>
  JSON.stringify(encodeErrorFrame(errorFrame(requestId, error, seq)))

const streamCancelled = new CancelledError({ code: "cancelled", message: "The request was cancelled by the client" })
const streamFailed = new InternalError({ code: "internal_error", message: "The request failed unexpectedly" })

/**
 * The error frame that ends a stream, from how it ended: none when its
 * client went away (nobody to tell).
 */
const streamError = (cause: Cause.Cause<AiBaseError>): AiBaseError | undefined => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) return failure.value
  if (!Cause.isInterruptedOnly(cause)) return streamFailed
  const interruptors = Cause.interruptors(cause)
  if (isDisconnect(interruptors)) return undefined
  return isShutdown(interruptors) ? stoppedAtShutdown : streamCancelled
}

const encodingFailed = (error: ParseResult.ParseError) =>
  Effect.logError("A handler produced a value its Schema rejects", error).pipe(
    Effect.zipRight(new InternalError({ code: "encoding_failed", message: "The server produced an invalid response" }))
  )

const unfinished = new InternalError({ code: "stream_unfinished", message: "The stream ended without its final frame" })

/** Waits when the connection asked for it. */
const awaitEmit = (wait: Promise<void> | undefined): Effect.Effect<void> =>
  wait === undefined ? Effect.void : Effect.promise(() => wait)

/** Builds the routes from the group; needs the group's handlers (and their push forms) in context. */
export const make: Effect.Effect<Envelope, never, Rpc.ToHandler<AiBaseRpc> | PushHandlers | Ledger | Telemetry> = Effect.gen(function*() {
  const routes = new Map<string, Route>()
  const context = yield* Effect.context<Rpc.ToHandler<AiBaseRpc>>()
  const pushHandlers = yield* PushHandlers
  const ledger = yield* Ledger
  const telemetry = yield* Telemetry
  for (const rpc of AiBaseRpcs.requests.values()) {
    const names: WireName = WireNames[rpc._tag]
    const invoke = handlerOf(context, rpc.key)
    const payloadSchema: Schema.Schema.AnyNoContext = rpc.payloadSchema
    const decodePayload = decodeSafely(Schema.decodeUnknownEither(payloadSchema, { onExcessProperty: "ignore" }), identity)
    const invalidPayload = (error: ParseResult.ParseError) => validationError("invalid_payload", error, ["payload"])
    const successSchema: Schema.Schema.AnyNoContext = rpc.successSchema

    let run: Route["run"]
    if (RpcSchema.isStreamSchema(successSchema)) {
      const eventSchema: Schema.Schema<StreamEvent, StreamEvent> = successSchema.success
      const encodeEvent = Schema.encodeUnknownEither(eventSchema)
      const end = names.end
      const push = pushHandlers.get(rpc._tag)
      const isResume = rpc._tag === "Resume"
      run = (requestId, payload, emit, caller) => {
        let ended = false
        /** The seq of the last frame sent: the stream's own numbers, or a count. */
        let seq = 0
        /** Whether the stream numbers its frames itself (a resumable stream, a resume). */
        let numbered = isResume
        const quotedId = JSON.stringify(requestId)
        // One synchronous call per event: encode, frame, hand to the connection.
        const sink = (event: StreamEvent, json?: string): Promise<void> | undefined => {
          if (event.seq !== undefined) numbered = true
          seq = event.seq ?? seq + 1
          if (PLAIN_EVENTS.has(event._tag)) {
            return emit(
              `{"type":"${event._tag}","request_id":${quotedId},"seq":${seq},"data":${event.json ?? json ?? JSON.stringify(event.data)}}`,
              false
            )
          }
          const encoded = encodeEvent(event)
          if (Either.isLeft(encoded)) throw new EncodingFailure(encoded.left)
          ended = encoded.right._tag === end
          return emit(frame(encoded.right._tag, requestId, encoded.right.data, seq), ended)
        }
        const stream: Effect.Effect<void, AiBaseError> = push === undefined
          ? Either.match(decodePayload(payload), {
            onLeft: (error) => Effect.fail(invalidPayload(error)),
            onRight: (decoded) =>
              Stream.runForEach(asStream(invoke(decoded)), (event) => Effect.suspend(() => awaitEmit(sink(event))))
          })
          : Either.match(push.run(payload, caller), {
            onLeft: (error) => Effect.fail(invalidPayload(error)),
            onRight: (stream) => stream(sink)
          })
        return stream.pipe(
          Effect.catchAllDefect((defect) => defect instanceof EncodingFailure ? encodingFailed(defect.error) : Effect.die(defect)),
          Effect.zipRight(Effect.suspend(() => ended ? Effect.void : Effect.fail(unfinished))),
          // A stream's last frame is numbered like the others, so the route sends its error frame itself.
          Effect.onExit((exit) =>
            Effect.sync(() => {
              if (ended || Exit.isSuccess(exit)) return
              const error = streamError(exit.cause)
              if (error === undefined) return
              ended = true
              // A numbered stream's own last frame keeps its number; its other errors (not found, taken over) have none.
              emit(encodeError(requestId, error, numbered ? seqOfFinalError(error) : seq + 1), true)
            })
          )
        )
      }
    } else {
      const encodeData = Schema.encodeUnknownEither(successSchema)
      const type = names.response ?? `${names.request}_response`
      run = (requestId, payload, emit) =>
        Either.match(decodePayload(payload), {
          onLeft: (error) => Effect.fail(invalidPayload(error)),
          onRight: (decoded) => {
            const result = invoke(decoded)
            return Effect.isEffect(result)
              ? Effect.flatMap(result, (data) => {
                // A value still in the wire form it arrived in goes out as that text (see RawJson).
                const text = RawJson.textOf(data)
                if (text !== undefined) return awaitEmit(emit(frameOfJson(type, requestId, text), true))
                return Either.match(encodeData(data), {
                  onLeft: encodingFailed,
                  onRight: (encoded) => awaitEmit(emit(frame(type, requestId, encoded), true))
                })
              })
              : Effect.dieMessage(`${rpc._tag} returned a stream`)
          }
        })
    }
    routes.set(names.request, { type: names.request, run: RECORDED_RPCS.has(rpc._tag) ? recorded(ledger, telemetry, names.request, run) : run })
  }

  const known = [...routes.keys(), CANCEL].join(", ")

  const read = (text: string): Either.Either<Incoming, { readonly requestId: string | null; readonly error: ValidationError }> => {
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      return Either.left({
        requestId: null,
        error: new ValidationError({ code: "invalid_json", message: "The frame is not valid JSON" })
      })
    }
    // Deeper values would make Schema decoding and error formatting recurse toward the stack limit.
    if (jsonDepthExceeds(json, MAX_JSON_DEPTH)) return Either.left({ requestId: salvageRequestId(json), error: tooDeep() })
    const envelope = decodeEnvelope(json)
    if (Either.isLeft(envelope)) {
      return Either.left({ requestId: salvageRequestId(json), error: validationError("invalid_frame", envelope.left) })
    }
    const { payload, request_id, type } = envelope.right
    if (type !== CANCEL && !routes.has(type)) {
      return Either.left({
        requestId: request_id,
        error: new ValidationError({
          code: "unknown_type",
          message: `Unknown request type "${truncate(type)}"; expected one of: ${known}`
        })
      })
    }
    return Either.right({ type, requestId: request_id, payload })
  }

  return {
    routes,
    read,
    encodeError: (requestId, error) => encodeError(requestId, error),
    encodeCancelResponse: (requestId, data) => frame(CANCEL_RESPONSE, requestId, data)
  }
})

/** A route whose requests are recorded (ledger, metrics, log, spans), from start to exit. */
const recorded = (ledger: Ledger["Type"], telemetry: Telemetry["Type"], type: string, run: Route["run"]): Route["run"] => {
  const finish = finishRecord(ledger, telemetry)
  return (requestId, payload, emit, caller) => {
    const record = ledger.begin(requestId, type, caller)
    return run(requestId, payload, emit, caller).pipe(
      Effect.locally(RequestRecord.current, record),
      Effect.onExit((exit) => record.finishedBy === "request" ? finish(record, exit) : Effect.void)
    )
  }
}

/** Carries a Schema failure out of a synchronous sink. */
class EncodingFailure {
  constructor(readonly error: ParseResult.ParseError) {}
}

const truncate = (text: string): string => text.length > 64 ? `${text.slice(0, 64)}…` : text

/** The request id of a frame whose envelope is invalid, if it has a usable one. */
const salvageRequestId = (value: unknown): string | null => {
  if (typeof value !== "object" || value === null || !("request_id" in value)) return null
  const id = value.request_id
  return typeof id === "string" && id.length > 0 && id.length <= 128 ? id : null
}

/** What a handler returns, with its types erased. */
type Result = Effect.Effect<unknown, AiBaseError> | Stream.Stream<unknown, AiBaseError>

interface ErasedHandler {
  readonly handler: (payload: unknown, options: { readonly clientId: number; readonly headers: Headers.Headers }) =>
    | Effect.Effect<unknown, unknown>
    | Stream.Stream<unknown, unknown>
    | Rpc.Wrapper<Effect.Effect<unknown, unknown> | Stream.Stream<unknown, unknown>>
  readonly context: Context.Context<never>
}

/**
 * The handler registered for an Rpc, with its types erased (the route decodes
 * the payload with the Rpc's Schema first). This is the lookup that
 * `RpcGroup.accessHandler` does, keyed by the Rpc's key.
 */
const handlerOf = (context: Context.Context<never>, key: string) => {
  const { context: handlerContext, handler } = Context.unsafeGet(context, Context.GenericTag<ErasedHandler>(key))
  return (payload: unknown): Result => {
    const result = handler(payload, { clientId: 0, headers: Headers.empty })
    const value = Rpc.isWrapper(result) ? result.value : result
    // The handler's own context is all it needs, so it replaces the caller's.
    return Effect.isEffect(value)
      ? value.pipe(Effect.mapError(toAiBaseError), Effect.mapInputContext(() => handlerContext))
      : value.pipe(Stream.mapError(toAiBaseError), Stream.provideContext(handlerContext))
  }
}

/** Every Rpc in the group fails with AiBaseError; anything else is a bug. */
const toAiBaseError = (error: unknown): AiBaseError =>
  isAiBaseError(error) ? error : new InternalError({ code: "internal_error", message: "The request failed unexpectedly" })

/** A streaming handler returns a Stream, or an Effect of a Mailbox. */
const asStream = (result: Result): Stream.Stream<StreamEvent, AiBaseError> => {
  const stream: Stream.Stream<unknown, AiBaseError> = Effect.isEffect(result)
    ? Stream.unwrap(Effect.flatMap(result, (value) =>
      Mailbox.isReadonlyMailbox(value)
        ? Effect.succeed(Mailbox.toStream(value).pipe(Stream.mapError(toAiBaseError)))
        : Effect.dieMessage("expected a stream")))
    : result
  return Stream.mapEffect(stream, (value) => isStreamEvent(value) ? Effect.succeed(value) : Effect.dieMessage("expected a stream event"))
}

const isStreamEvent = (value: unknown): value is StreamEvent =>
  typeof value === "object" && value !== null && "_tag" in value && typeof value._tag === "string" && "data" in value


