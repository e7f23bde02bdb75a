/**
 * One /ws client connection, from upgrade to close.
 *
 * A connection is plain state on its `ws` socket, not a fiber: an idle
 * client costs little more than the socket. Frames are read synchronously
 * (decode the envelope, find the route, check limits) and every accepted
 * request runs in its own fiber, keyed by its request_id so that `cancel`
 * can reach it. A request that completes synchronously (a ping) finishes
 * inside its fork.
 *
 * Frames go straight to the socket, corked for the rest of the turn so that
 * the frames of one turn leave in one write. Above WS_MAX_BUFFERED_BYTES the
 * connection stops reading the client and its producers wait; a client that
 * does not read for SERVER_WRITE_TIMEOUT is dropped. Closing the socket
 * interrupts every request, and interrupting a request aborts its upstream
 * call.
 */
import { Cause, Duration, Effect, Either, Exit, type Fiber, FiberId, Option, Schema } from "effect"
import { Duplex } from "node:stream"
import type { WebSocket } from "ws"
import { type Hub, isShutdown, type Membership, stoppedAtShutdown } from "../hub/Hub.js"
import {
  type AiBaseError,
  CancelledError,
  InternalError,
  OverloadedError,
  UnavailableError,
  ValidationError
} from "../protocol/Errors.js"
import { CancelRequest } from "../protocol/Frames.js"
import { validationError } from "../protocol/Validation.js"
import { type Caller, DisconnectFiberId } from "../ledger/RequestRecord.js"
import type { Telemetry } from "../observability/Telemetry.js"
import type { Emit, Envelope, Incoming, Route } from "./Envelope.js"

export interface Limits {
  readonly maxInFlight: number
  readonly maxBufferedBytes: number
  readonly writeTimeout: Duration.Duration
}

export interface Options {
  readonly envelope: Envelope
  readonly hub: Hub["Type"]
  readonly telemetry: Telemetry["Type"]
  readonly limits: Limits
  /** Starts a request's fiber (the server's runtime). */
  readonly fork: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>
  /** Reports a dropped client (logged once per client). */
  readonly onDropped: (reason: string) => void
  /** Reports a request that failed unexpectedly (its client gets an `internal` error). */
  readonly onDefect: (cause: Cause.Cause<unknown>, request: Incoming) => void
}

interface InFlight {
  fiber: Fiber.RuntimeFiber<void, AiBaseError> | undefined
  /** Set when the client cancels the request; it becomes the request's error frame. */
  cancelled: boolean
  /** Set once the request's final frame is sent: nothing may follow it. */
  finished: boolean
}

const decodeCancel = Schema.decodeUnknownEither(CancelRequest)

const cancelled = new CancelledError({ code: "cancelled", message: "The request was cancelled by the client" })
const internal = new InternalError({ code: "internal_error", message: "The request failed unexpectedly" })
const refusedAtShutdown = new UnavailableError({
  code: "shutting_down",
  message: "The server is shutting down; retry on a new connection shortly"
})
const binaryFrame = new ValidationError({ code: "binary_frame", message: "Send requests as JSON text frames" })

/**
 * The net socket under a ws socket. ws keeps it private (`_socket`); corking
 * it is the only way to join several frames into one write. Undefined if ws
 * ever stops exposing it, and writes then go one by one.
 */
export const underlyingSocket = (ws: WebSocket): Duplex | undefined => {
  const socket: unknown = Reflect.get(ws, "_socket")
  return socket instanceof Duplex ? socket : undefined
}

/** Serves the envelope protocol on an upgraded socket until it closes. */
export const serve = (ws: WebSocket, membership: Membership, caller: Caller, options: Options): void => {
  const { envelope, fork, hub, limits, telemetry } = options
  const requests = new Map<string, InFlight>()
  const socket = underlyingSocket(ws)
  let corked = false
  let closed = false
  let dropped = false
  /** Set while the client is over its buffer: producers wait for it. */
  let drained: { readonly promise: Promise<void>; readonly resolve: () => void; readonly timer: NodeJS.Timeout } | undefined

  const uncork = () => {
    corked = false
    socket?.uncork()
  }

  const drop = (reason: string) => {
    if (dropped) return
    dropped = true
    options.onDropped(reason)
    ws.terminate()
  }

  const onFlushed = () => {
    if (drained === undefined) return
    const { resolve, timer } = drained
    drained = undefined
    clearTimeout(timer)
    if (!closed) ws.resume()
    resolve()
  }

  /** Stops reading the client until what it has not read is flushed; drops it after SERVER_WRITE_TIMEOUT. */
  const overLimit = (): Promise<void> => {
    if (drained !== undefined) return drained.promise
    let resolve!: () => void
    const promise = new Promise<void>((done) => {
      resolve = done
    })
    const timer = setTimeout(
      () => drop(`nothing read for ${Duration.format(limits.writeTimeout)}`),
      Duration.toMillis(limits.writeTimeout)
    )
    drained = { promise, resolve, timer }
    ws.pause()
    return promise
  }

  /** Sends a frame; a promise when the client is over its buffer. */
  const send = (frame: string): Promise<void> | undefined => {
    if (closed) return undefined
    if (socket !== undefined && !corked) {
      corked = true
      socket.cork()
      process.nextTick(uncork)
    }
    if (ws.bufferedAmount + frame.length <= limits.maxBufferedBytes) {
      ws.send(frame)
      return drained?.promise
    }
    // The callback runs once this frame (and all before it) reached the OS.
    ws.send(frame, onFlushed)
    return overLimit()
  }

  const sendError = (requestId: string | null, error: AiBaseError): void => {
    send(envelope.encodeError(requestId, error))
  }

  /** Answers a frame that does not become a request. */
  const reject = (requestId: string | null, error: AiBaseError): void => {
    telemetry.frameRejected(error.code)
    sendError(requestId, error)
  }

  const start = (incoming: Incoming, route: Route): void => {
    const { requestId } = incoming
    if (hub.unsafeStats().draining) return reject(requestId, refusedAtShutdown)
    const entry: InFlight = { fiber: undefined, cancelled: false, finished: false }
    const emit: Emit = (frame, final) => {
      if (entry.finished) return undefined
      if (final) entry.finished = true
      return send(frame)
    }
    // The request's outcome is read from its exit in one place, with no
    // combinators wrapped around the request itself.
    const settle = (exit: Exit.Exit<void, AiBaseError>): void => {
      if (requests.get(requestId) === entry) requests.delete(requestId)
      telemetry.requestEnded(route.type, "ws", exit)
      if (Exit.isSuccess(exit)) return
      const cause = exit.cause
      if (entry.finished) {
        if (!Cause.isInterruptedOnly(cause) && Option.isNone(Cause.failureOption(cause))) options.onDefect(cause, incoming)
        return
      }
      const failure = Cause.failureOption(cause)
      if (Option.isSome(failure)) return void emit(envelope.encodeError(requestId, failure.value), true)
      if (Cause.isInterruptedOnly(cause)) {
        // A disconnect needs no frame; a cancel or a shutdown gets its error.
        const reason = entry.cancelled ? cancelled : isShutdown(Cause.interruptors(cause)) ? stoppedAtShutdown : undefined
        if (reason !== undefined) emit(envelope.encodeError(requestId, reason), true)
        return
      }
      options.onDefect(cause, incoming)
      emit(envelope.encodeError(requestId, internal), true)
    }
    // The entry goes in first: a request can finish synchronously inside fork.
    requests.set(requestId, entry)
    telemetry.requestStarted(route.type)
    const fiber = fork(route.run(requestId, incoming.payload, emit, caller))
    const exit = fiber.unsafePoll()
    if (exit !== null) return settle(exit)
    entry.fiber = fiber
    hub.unsafeTrack(fiber)
    fiber.addObserver(settle)
  }

  const cancel = (incoming: Incoming): void => {
    const target = decodeCancel(incoming.payload)
    if (Either.isLeft(target)) {
      return reject(incoming.requestId, validationError("invalid_payload", target.left, ["payload"]))
    }
    const targetId = target.right.request_id
    const entry = requests.get(targetId)
    const respond = (wasCancelled: boolean) => {
      send(envelope.encodeCancelResponse(incoming.requestId, { request_id: targetId, cancelled: wasCancelled }))
    }
    if (entry === undefined || entry.fiber === undefined || entry.finished || entry.cancelled) {
      return respond(false)
    }
    entry.cancelled = true
    // Answer once the request has stopped (its error frame comes first).
    entry.fiber.addObserver(() => respond(true))
    entry.fiber.unsafeInterruptAsFork(FiberId.none)
  }

  const onFrame = (text: string): void => {
    const read = envelope.read(text)
    if (Either.isLeft(read)) return reject(read.left.requestId, read.left.error)
    const incoming = read.right
    if (incoming.type === "cancel") return cancel(incoming)
    if (requests.has(incoming.requestId)) {
      return reject(
        incoming.requestId,
        new ValidationError({
          code: "duplicate_request_id",
          message: `A request with request_id "${incoming.requestId}" is still in flight on this connection`
        })
      )
    }
    if (requests.size >= limits.maxInFlight) {
      return reject(
        incoming.requestId,
        new OverloadedError({
          code: "too_many_in_flight",
          message: `This connection already has ${limits.maxInFlight} requests in flight; wait for one to finish`
        })
      )
    }
    const route = envelope.routes.get(incoming.type)
    if (route !== undefined) start(incoming, route)
  }

  ws.on("message", (data, isBinary) => {
    if (isBinary) return reject(null, binaryFrame)
    try {
      onFrame(Array.isArray(data) ? Buffer.concat(data).toString() : data.toString())
    } catch (error) {
      // Nothing a client sends may end the process: a bug here costs one error frame.
      options.onDefect(Cause.die(error), { type: "unknown", requestId: "", payload: undefined })
      sendError(null, internal)
    }
  })

  ws.once("close", () => {
    closed = true
    if (drained !== undefined) onFlushed()
    for (const entry of requests.values()) entry.fiber?.unsafeInterruptAsFork(DisconnectFiberId)
  })

  // Server shutdown: the Hub has already stopped what still ran (their error
  // frames are sent), so close after them with 1001.
  membership.onShutdown(Effect.sync(() => {
    if (ws.readyState === ws.OPEN) ws.close(1001, "server shutting down")
  }))
}
