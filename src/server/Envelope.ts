/**
 * The /ws envelope protocol as an adapter over the RpcGroup's handlers.
 * Each request type gets a route built from its Rpc: the payload Schema
 * decodes, the handler runs, and the success Schema encodes the answer
 * straight into a JSON frame. Adding an Rpc to the group and a name to
 * `WireNames` is all it takes to serve it on /ws.
 */
import { Headers } from "@effect/platform"
import { Rpc, RpcSchema } from "@effect/rpc"
import { Context, Effect, Either, Mailbox, type ParseResult, Schema, Stream } from "effect"
import { type AiBaseError, InternalError, isAiBaseError, ValidationError } from "../protocol/Errors.js"
import { CancelResponse, ErrorFrame, errorFrame, RequestEnvelope } from "../protocol/Frames.js"
import { type AiBaseRpc, AiBaseRpcs, STREAM_END, WireNames } from "../protocol/Rpcs.js"
import { validationError } from "../protocol/Validation.js"

/** Hands an encoded frame to the connection; `final` marks a request's last frame. */
export type Emit = (frame: string, final: boolean) => Effect.Effect<void>

export interface Route {
  readonly type: string
  /** Decodes the payload, runs the request to completion and emits its frames. */
  readonly run: (requestId: string, payload: unknown, emit: Emit) => Effect.Effect<void, AiBaseError>
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

const decodeJson = Schema.decodeUnknownEither(Schema.parseJson())
const decodeEnvelope = Schema.decodeUnknownEither(RequestEnvelope)
const encodeErrorFrame = Schema.encodeSync(Schema.parseJson(ErrorFrame))
const encodeCancelFrame = Schema.encodeSync(Schema.parseJson(Schema.Struct({
  type: Schema.Literal("cancel_response"),
  request_id: Schema.String,
  data: CancelResponse
})))

const encodingFailed = (error: ParseResult.ParseError) =>
  Effect.logError("A handler produced a value its Schema rejects", error).pipe(
    Effect.zipRight(new InternalError({ code: "encoding_failed", message: "The server produced an invalid response" }))
  )

/** Builds the routes from the group; needs the group's handlers in context. */
export const make: Effect.Effect<Envelope, never, Rpc.ToHandler<AiBaseRpc>> = Effect.gen(function*() {
  const routes = new Map<string, Route>()
  const context = yield* Effect.context<Rpc.ToHandler<AiBaseRpc>>()
  for (const rpc of AiBaseRpcs.requests.values()) {
    const names: { readonly request: string; readonly response?: string } = WireNames[rpc._tag]
    const invoke = handlerOf(context, rpc.key)
    const payloadSchema: Schema.Schema.AnyNoContext = rpc.payloadSchema
    const decodePayload = Schema.decodeUnknownEither(payloadSchema, { errors: "all", onExcessProperty: "ignore" })
    const call = (payload: unknown): Effect.Effect<Result, AiBaseError> =>
      Either.match(decodePayload(payload), {
        onLeft: (error) => Effect.fail(validationError("invalid_payload", error, ["payload"])),
        onRight: (decoded) => Effect.succeed(invoke(decoded))
      })
    const successSchema: Schema.Schema.AnyNoContext = rpc.successSchema

    let run: Route["run"]
    if (RpcSchema.isStreamSchema(successSchema)) {
      const eventSchema: Schema.Schema<StreamEvent, StreamEvent> = successSchema.success
      const encodeEvent = Schema.encodeUnknownEither(eventSchema)
      run = (requestId, payload, emit) =>
        call(payload).pipe(
          Effect.map((result) => Effect.isEffect(result) ? Stream.unwrap(Effect.flatMap(result, asStream)) : result),
          Effect.flatMap(Stream.runForEach((value) =>
            Either.match(encodeEvent(value), {
              onLeft: encodingFailed,
              onRight: (encoded) =>
                emit(
                  JSON.stringify({ type: encoded._tag, request_id: requestId, data: encoded.data }),
                  encoded._tag === STREAM_END
                )
            })
          ))
        )
    } else {
      const encodeFrame = Schema.encodeUnknownEither(Schema.parseJson(Schema.Struct({
        type: Schema.String,
        request_id: Schema.String,
        data: successSchema
      })))
      const type = names.response ?? `${names.request}_response`
      run = (requestId, payload, emit) =>
        call(payload).pipe(
          Effect.flatMap((result) => Effect.isEffect(result) ? result : Effect.dieMessage(`${rpc._tag} returned a stream`)),
          Effect.flatMap((data) =>
            Either.match(encodeFrame({ type, request_id: requestId, data }), {
              onLeft: encodingFailed,
              onRight: (frame) => emit(frame, true)
            })
          )
        )
    }
    routes.set(names.request, { type: names.request, run })
  }

  const known = [...routes.keys(), "cancel"].join(", ")

  const read: Envelope["read"] = (text) => {
    const json = decodeJson(text)
    if (Either.isLeft(json)) {
      return Either.left({
        requestId: null,
        error: new ValidationError({ code: "invalid_json", message: "The frame is not valid JSON" })
      })
    }
    const envelope = decodeEnvelope(json.right)
    if (Either.isLeft(envelope)) {
      return Either.left({ requestId: salvageRequestId(json.right), error: validationError("invalid_frame", envelope.left) })
    }
    const { payload, request_id, type } = envelope.right
    return Either.right({ type, requestId: request_id, payload })
  }

  return {
    routes,
    read: (text) =>
      Either.flatMap(read(text), (incoming) =>
        incoming.type === "cancel" || routes.has(incoming.type) ? Either.right(incoming) : Either.left({
          requestId: incoming.requestId,
          error: new ValidationError({
            code: "unknown_type",
            message: `Unknown request type "${incoming.type}"; expected one of: ${known}`
          })
        })),
    encodeError: (requestId, error) => encodeErrorFrame(errorFrame(requestId, error)),
    encodeCancelResponse: (requestId, data) => encodeCancelFrame({ type: "cancel_response", request_id: requestId, data })
  }
})

/** The request id of a frame whose envelope is invalid, if it has a usable one. */
const salvageRequestId = (value: unknown): string | null => {
  if (typeof value !== "object" || value === null || !("request_id" in value)) return null
  const id = value.request_id
  return typeof id === "string" && id.length > 0 && id.length <= 128 ? id : null
}

/** The shape of a stream element: its tag names the frame, `data` is the frame's data. */
interface StreamEvent {
  readonly _tag: string
  readonly data: unknown
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

/** A streaming handler may return its stream as an Effect of a Mailbox. */
const asStream = (value: unknown): Effect.Effect<Stream.Stream<unknown, AiBaseError>> =>
  Mailbox.isReadonlyMailbox(value)
    ? Effect.succeed(Mailbox.toStream(value).pipe(Stream.mapError(toAiBaseError)))
    : Effect.dieMessage("expected a stream")
