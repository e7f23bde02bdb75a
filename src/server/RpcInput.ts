/**
 * What /rpc does with a client's frames before @effect/rpc's RpcServer acts
 * on them. RpcServer trusts the shape of every decoded message: a frame of
 * `null`, a request id or an Interrupt's `requestId` that `BigInt` cannot
 * read, or headers that are not name/value pairs make it throw inside the
 * socket's read loop, which ends the connection (RpcServer.js, `make`'s
 * `run` callback and `makeSocketProtocol`'s `onSocket`); and a payload its
 * Schema rejects comes back as a `Die` defect instead of a typed error.
 *
 * So, on /rpc:
 * - `makeSerialization` is @effect/rpc's JSON serialization with a check of
 *   each decoded message's shape (no second parse, a few `typeof`s per
 *   frame). A message whose request id cannot be read, or whose id is
 *   already in flight, is dropped with a Defect message (RpcServer's own
 *   answer to a frame it cannot read); an Interrupt or Ack whose id cannot
 *   be one of the client's requests, and an Eof, are ignored; a request with
 *   malformed headers is passed on with an `InvalidRequest` in place of its
 *   payload.
 * - `lenientPayloads` gives RpcServer payload Schemas that never fail: a
 *   payload the real Schema rejects decodes to an `InvalidRequest` carrying
 *   the `invalid_payload` ValidationError (described as /ws describes it).
 * - `guardHandlers` answers a request whose payload is an `InvalidRequest`
 *   with that error instead of calling its handler, so it reaches the client
 *   as a typed failure, encoded by the group's error Schema like any other.
 */
import { jsonDepthExceeds, MAX_JSON_DEPTH, tooDeep } from "../protocol/JsonDepth.js"
import { type Rpc, RpcGroup, RpcSerialization } from "@effect/rpc"
import { Context, Effect, Layer, ParseResult, Schema } from "effect"
import { ValidationError } from "../protocol/Errors.js"
import { parseSafely, validationError } from "../protocol/Validation.js"

/**
 * Stands in for the payload of a request that cannot run. Clients cannot
 * forge one: JSON has no class instances.
 */
export class InvalidRequest {
  constructor(readonly error: ValidationError) {}
}

/** Why a frame was dropped; RpcServer sends it to the client as a Defect. */
export class UnreadableFrame extends Error {
  override readonly name = "UnreadableFrame"
}

// ---------------------------------------------------------------------------
// frames

/**
 * A request id as RpcClient writes it (a bigint as a string), in canonical
 * form: RpcServer keys requests by the BigInt, so "00135" and "135" would be
 * the same request to it but two to the in-flight check here. Bounded, since
 * RpcServer turns it into a BigInt and back: a 1 MB id costs seconds of CPU.
 */
const REQUEST_ID = /^(?:0|-?[1-9]\d{0,38})$/

const isRequestId = (id: unknown): boolean => typeof id === "string" && REQUEST_ID.test(id)

/** What RpcServer's `Headers.fromInput` reads without throwing, with string values. */
const isHeaders = (headers: unknown): boolean => {
  if (headers === undefined) return true
  if (typeof headers !== "object" || headers === null) return false
  if (Array.isArray(headers)) {
    for (const pair of headers) {
      if (!Array.isArray(pair) || typeof pair[0] !== "string" || typeof pair[1] !== "string") return false
    }
    return true
  }
  for (const value of Object.values(headers)) if (typeof value !== "string") return false
  return true
}

const malformedHeaders = new ValidationError({
  code: "invalid_frame",
  message: "headers: Expected an array of [name, value] string pairs"
})

/** A message that is dropped, with the reason the client is sent in a Defect. */
export class Rejected {
  constructor(readonly reason: string) {}
}

const notAMessage = new Rejected("Expected a JSON object with a string _tag")
const invalidId = new Rejected("Invalid request id: expected an integer of 1 to 39 digits without leading zeros, as a string")
const invalidTag = new Rejected("Invalid request tag: expected a string")

/**
 * Checks one decoded message before RpcServer sees it: returns the message
 * to pass on (repaired when a request's headers are malformed, so that the
 * request still gets an answer), `undefined` to ignore it, or why it is
 * rejected. Messages with a `_tag` this does not know pass unchanged
 * (RpcServer answers those with a Defect). Valid messages pass as they are,
 * without copying.
 */
export const checkMessage = (message: unknown): object | Rejected | undefined => {
  if (typeof message !== "object" || message === null || !("_tag" in message)) return notAMessage
  switch (message._tag) {
    case "Request": {
      if (!("id" in message) || !isRequestId(message.id)) return invalidId
      if (!("tag" in message) || typeof message.tag !== "string") return invalidTag
      if ("headers" in message && !isHeaders(message.headers)) {
        return { ...message, headers: [], payload: new InvalidRequest(malformedHeaders) }
      }
      // Deeper values would make Schema decoding and error formatting recurse toward the stack limit.
      if (jsonDepthExceeds(message, MAX_JSON_DEPTH)) return { ...message, headers: [], payload: new InvalidRequest(tooDeep()) }
      return message
    }
    case "Interrupt":
    case "Ack": {
      // An id that cannot be one of the client's requests: nothing to interrupt or acknowledge.
      const id = "requestId" in message ? message.requestId : undefined
      return isRequestId(id) || Number.isSafeInteger(id) ? message : undefined
    }
    case "Eof":
      // On a socket the input ends when the socket closes. RpcServer would
      // mark the client as ended and silently drop every later request.
      return undefined
    default:
      return typeof message._tag === "string" ? message : notAMessage
  }
}

/**
 * The header that carries a request's id to its handler and middleware
 * (RpcServer passes them headers, not the id). Set by the server; a value
 * the client sent under this name is replaced.
 */
export const REQUEST_ID_HEADER = "x-aibase-request-id"

const withRequestIdHeader = (message: object, id: string): object => {
  const headers: unknown = "headers" in message ? message.headers : undefined
  const pairs: Array<readonly [string, string]> = []
  if (Array.isArray(headers)) {
    for (const pair of headers) if (Array.isArray(pair) && pair[0] !== REQUEST_ID_HEADER) pairs.push([String(pair[0]), String(pair[1])])
  } else if (typeof headers === "object" && headers !== null) {
    for (const [name, value] of Object.entries(headers)) if (name !== REQUEST_ID_HEADER) pairs.push([name, String(value)])
  }
  pairs.push([REQUEST_ID_HEADER, id])
  return { ...message, headers: pairs }
}

/**
 * The id of a request RpcServer will answer with an Exit (one whose tag it
 * serves), or undefined.
 */
const answeredId = (message: object, tags: ReadonlySet<string>): string | undefined =>
  "_tag" in message && message._tag === "Request" && "tag" in message && typeof message.tag === "string" &&
    tags.has(message.tag) && "id" in message && typeof message.id === "string"
    ? message.id
    : undefined

const exitId = (response: unknown): string | undefined =>
  typeof response === "object" && response !== null && "_tag" in response && response._tag === "Exit" &&
    "requestId" in response && typeof response.requestId === "string"
    ? response.requestId
    : undefined

/**
 * @effect/rpc's JSON serialization for a server of the Rpcs tagged `tags`,
 * with every decoded message checked by `checkMessage`. It also refuses a
 * request whose id is already in flight on the connection: RpcServer would
 * make it wait for the first, encode the first's answers with the second's
 * Schemas and never answer the second. A request is in flight from its frame
 * until its Exit is written.
 */
export const makeSerialization = (tags: ReadonlySet<string>): RpcSerialization.RpcSerialization["Type"] =>
  RpcSerialization.RpcSerialization.of({
    contentType: RpcSerialization.json.contentType,
    includesFraming: RpcSerialization.json.includesFraming,
    unsafeMake: () => {
      const json = RpcSerialization.json.unsafeMake()
      const inFlight = new Set<string>()
      return {
        // A throw here (unreadable JSON, or a rejected message) is answered by
        // RpcServer's socket protocol with a Defect message.
        decode: (bytes) => {
          const messages = json.decode(bytes)
          const checked: Array<unknown> = []
          for (const message of messages) {
            const result = checkMessage(message)
            if (result instanceof Rejected) throw new UnreadableFrame(result.reason)
            if (result === undefined) continue
            const id = answeredId(result, tags)
            if (id !== undefined) {
              if (inFlight.has(id)) throw new UnreadableFrame(`Request id ${id} is already in flight on this connection`)
              inFlight.add(id)
              checked.push(withRequestIdHeader(result, id))
              continue
            }
            checked.push(result)
          }
          return checked
        },
        encode: (response) => {
          const id = exitId(response)
          if (id !== undefined) inFlight.delete(id)
          return json.encode(response)
        }
      }
    }
  })

/** `makeSerialization` for the Rpcs of `group`. */
export const layerSerialization = <R extends Rpc.Any>(
  group: RpcGroup.RpcGroup<R>
): Layer.Layer<RpcSerialization.RpcSerialization> =>
  Layer.succeed(RpcSerialization.RpcSerialization, makeSerialization(new Set(group.requests.keys())))

// ---------------------------------------------------------------------------
// payloads

/**
 * `schema`, except that a value it rejects decodes to an `InvalidRequest`
 * (and an `InvalidRequest` passes through) instead of failing. A valid
 * payload is decoded once, as RpcServer decodes it; a rejected one is
 * described as /ws describes it (every error, `payload.` paths).
 */
export const lenient = <A, I, R>(schema: Schema.Schema<A, I, R>): Schema.Schema<unknown, unknown, R> => {
  // Default options first: `errors: "all"` doubles the cost of a valid payload.
  const decode = parseSafely(ParseResult.decodeUnknown(schema))
  const decodeAll = parseSafely(ParseResult.decodeUnknown(schema, { errors: "all", onExcessProperty: "ignore" }))
  const encode = ParseResult.encodeUnknown(schema)
  const invalid = (issue: ParseResult.ParseIssue) =>
    ParseResult.succeed(new InvalidRequest(validationError("invalid_payload", ParseResult.parseError(issue), ["payload"])))
  return Schema.transformOrFail(Schema.Unknown, Schema.Unknown, {
    strict: true,
    decode: (input) =>
      input instanceof InvalidRequest
        ? ParseResult.succeed(input)
        : ParseResult.orElse(decode(input), () => ParseResult.orElse(decodeAll(input), invalid)),
    encode: (value) => encode(value)
  })
}

/** What every Rpc is at runtime (the public `Rpc.Any` type hides it). */
interface RuntimeRpc extends Rpc.AnyWithProps {
  readonly setPayload: (schema: Schema.Schema.Any) => Rpc.Any
}

/**
 * The group RpcServer serves on /rpc: `group` with every payload Schema
 * made `lenient`. Its type is `group`'s: the `InvalidRequest`s it adds never
 * reach a handler wrapped by `guardHandlers`.
 */
export const lenientPayloads = <R extends Rpc.Any>(group: RpcGroup.RpcGroup<R>): RpcGroup.RpcGroup<R> => {
  const rpcs: Array<R> = []
  for (const rpc of group.requests.values()) {
    // Rpc's public types expose neither its Schemas nor setPayload for any Schema; both exist at runtime.
    const runtime = rpc as unknown as RuntimeRpc
    rpcs.push(runtime.setPayload(lenient(runtime.payloadSchema)) as R)
  }
  return RpcGroup.make(...rpcs).annotateContext(group.annotations)
}

type ErasedHandler = {
  readonly handler: (payload: unknown, options: unknown) => unknown
  readonly context: Context.Context<never>
}

/**
 * The handlers of `group`'s Rpcs in the context, each answering a request
 * whose payload is an `InvalidRequest` with its ValidationError (an Effect
 * failure: RpcServer runs a streamed handler's Effect too).
 */
export const guardHandlers = <R extends Rpc.Any>(group: RpcGroup.RpcGroup<R>) =>
  Layer.effectContext(Effect.map(Effect.context<Rpc.ToHandler<R>>(), (context) => {
    const entries = new Map(context.unsafeMap)
    for (const rpc of group.requests.values()) {
      const entry: ErasedHandler | undefined = context.unsafeMap.get(rpc.key)
      if (entry === undefined) continue
      entries.set(rpc.key, {
        ...entry,
        handler: (payload: unknown, options: unknown) =>
          payload instanceof InvalidRequest ? Effect.fail(payload.error) : entry.handler(payload, options)
      })
    }
    return Context.unsafeMake<Rpc.ToHandler<R>>(entries)
  }))
