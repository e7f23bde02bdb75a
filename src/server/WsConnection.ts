/**
 * One /ws client connection, from upgrade to close.
 *
 * Frames are read synchronously (decode the envelope, find the route, check
 * limits) and every accepted request runs in its own fiber, keyed by its
 * request_id so that `cancel` can reach it. All frames out go through one
 * bounded queue and one writer fiber, which stops feeding a client that does
 * not read (ws buffers without limit otherwise) and drops it after
 * SERVER_WRITE_TIMEOUT. Closing the connection's scope interrupts every
 * request, and interrupting a request aborts its upstream call.
 */
import { Socket } from "@effect/platform"
import { Duration, Effect, Either, Fiber, FiberSet, Queue, Schema } from "effect"
import type { AppConfigShape } from "../config/AppConfig.js"
import { type Hub, isShutdown, type Membership, stoppedAtShutdown } from "../hub/Hub.js"
import { type AiBaseError, CancelledError, InternalError, OverloadedError, ValidationError } from "../protocol/Errors.js"
import { CancelRequest } from "../protocol/Frames.js"
import { validationError } from "../protocol/Validation.js"
import type { Emit, Envelope, Incoming } from "./Envelope.js"
import type { Upgraded } from "./WebSocketUpgrade.js"

/** Frames waiting for the writer; beyond this a client is not reading its answers. */
const OUTBOUND_CAPACITY = 1024
/** Frames the writer takes per turn. */
const WRITE_BATCH = 256

interface InFlight {
  fiber: Fiber.RuntimeFiber<void> | undefined
  /** Set when the client cancels the request; it becomes the request's error frame. */
  cancelled: boolean
  /** Set once the request's final frame is queued: nothing may follow it. */
  finished: boolean
}

export interface ConnectionOptions {
  readonly upgraded: Upgraded
  readonly membership: Membership
  readonly envelope: Envelope
  readonly hub: Hub["Type"]
  readonly config: AppConfigShape
}

const decodeCancel = Schema.decodeUnknownEither(CancelRequest)

const cancelled = new CancelledError({ code: "cancelled", message: "The request was cancelled by the client" })
const internal = new InternalError({ code: "internal_error", message: "The request failed unexpectedly" })

export const run = (options: ConnectionOptions) => Effect.gen(function*() {
  const { config, envelope, hub, membership } = options
  const { raw, socket } = options.upgraded
  const limits = config.limits
  const outbound = yield* Queue.bounded<string | Socket.CloseEvent>(OUTBOUND_CAPACITY)
  const requests = new Map<string, InFlight>()
  const fibers = yield* FiberSet.make()
  const fork = yield* FiberSet.runtime(fibers)<never>()

  /** Drops a client that will not read: closing politely would need it to read. */
  const dropSlowClient = (why: string) =>
    Effect.logWarning("Dropping a client that is not reading its responses").pipe(
      Effect.annotateLogs({ reason: why }),
      Effect.zipRight(Effect.sync(() => raw.terminate()))
    )

  /** Queues a frame from the synchronous read path. */
  const send = (frame: string): void => {
    if (!Queue.unsafeOffer(outbound, frame)) {
      fork(dropSlowClient("outbound queue full"))
    }
  }

  const sendError = (requestId: string | null, error: AiBaseError): void => send(envelope.encodeError(requestId, error))

  // The writer: one fiber, so frames keep their order and ws never buffers
  // more than WS_MAX_BUFFERED_BYTES for a client.
  const waitUntilDrained = Effect.sleep(Duration.millis(10)).pipe(
    Effect.repeat({ until: () => raw.bufferedAmount <= limits.maxBufferedBytes / 2 }),
    Effect.timeoutFail({
      duration: config.server.writeTimeout,
      onTimeout: () => `nothing read for ${Duration.format(config.server.writeTimeout)}`
    })
  )
  // Writes go straight to ws: the socket is open by the time anything is queued.
  const writeAll = (frames: Iterable<string | Socket.CloseEvent>) =>
    Effect.sync(() => {
      for (const frame of frames) {
        if (Socket.isCloseEvent(frame)) raw.close(frame.code, frame.reason)
        else raw.send(frame)
      }
    })
  yield* Queue.takeBetween(outbound, 1, WRITE_BATCH).pipe(
    Effect.flatMap(writeAll),
    Effect.zipRight(Effect.suspend(() => raw.bufferedAmount > limits.maxBufferedBytes ? waitUntilDrained : Effect.void)),
    Effect.forever,
    Effect.catchAll(dropSlowClient),
    Effect.forkScoped
  )

  const start = (incoming: Incoming, run: (emit: Emit) => Effect.Effect<void, AiBaseError>): void => {
    const { requestId } = incoming
    const entry: InFlight = { fiber: undefined, cancelled: false, finished: false }
    const emit: Emit = (frame, final) =>
      final
        ? Effect.uninterruptibleMask((restore) =>
          restore(Queue.offer(outbound, frame)).pipe(Effect.zipRight(Effect.sync(() => {
            entry.finished = true
          })))
        )
        : Queue.offer(outbound, frame)
    const program = hub.track(run(emit)).pipe(
      Effect.catchAll((error) => entry.finished ? Effect.void : emit(envelope.encodeError(requestId, error), true)),
      Effect.catchAllDefect((defect) =>
        Effect.logError("Request failed unexpectedly", defect).pipe(
          Effect.zipRight(entry.finished ? Effect.void : emit(envelope.encodeError(requestId, internal), true))
        )
      ),
      Effect.onInterrupt((interruptors) =>
        Effect.sync(() => {
          if (entry.finished) return
          // A disconnect needs no frame; a cancel or a shutdown gets its error.
          // Finalizers cannot wait for queue space, so this takes the non-blocking path.
          const reason = entry.cancelled ? cancelled : isShutdown(interruptors) ? stoppedAtShutdown : undefined
          if (reason !== undefined) {
            entry.finished = true
            sendError(requestId, reason)
          }
        })
      ),
      Effect.ensuring(Effect.sync(() => {
        if (requests.get(requestId) === entry) requests.delete(requestId)
      })),
      Effect.annotateLogs({ request_id: requestId, request_type: incoming.type })
    )
    // The entry goes in first: a request can finish synchronously inside fork.
    requests.set(requestId, entry)
    entry.fiber = fork(program)
  }

  const cancel = (incoming: Incoming): void => {
    const target = decodeCancel(incoming.payload)
    if (Either.isLeft(target)) {
      return sendError(incoming.requestId, validationError("invalid_payload", target.left, ["payload"]))
    }
    const targetId = target.right.request_id
    const entry = requests.get(targetId)
    const respond = (wasCancelled: boolean) =>
      send(envelope.encodeCancelResponse(incoming.requestId, { request_id: targetId, cancelled: wasCancelled }))
    if (entry === undefined || entry.fiber === undefined || entry.finished || entry.cancelled) {
      return respond(false)
    }
    entry.cancelled = true
    fork(Fiber.interrupt(entry.fiber).pipe(Effect.zipRight(Effect.sync(() => respond(true)))))
  }

  const onFrame = (data: string | Uint8Array): void => {
    if (typeof data !== "string") {
      return sendError(null, new ValidationError({ code: "binary_frame", message: "Send requests as JSON text frames" }))
    }
    const read = envelope.read(data)
    if (Either.isLeft(read)) return sendError(read.left.requestId, read.left.error)
    const incoming = read.right
    if (incoming.type === "cancel") return cancel(incoming)
    if (requests.has(incoming.requestId)) {
      return sendError(
        incoming.requestId,
        new ValidationError({
          code: "duplicate_request_id",
          message: `A request with request_id "${incoming.requestId}" is still in flight on this connection`
        })
      )
    }
    if (requests.size >= limits.maxInFlight) {
      return sendError(
        incoming.requestId,
        new OverloadedError({
          code: "too_many_in_flight",
          message: `This connection already has ${limits.maxInFlight} requests in flight; wait for one to finish`
        })
      )
    }
    const route = envelope.routes.get(incoming.type)
    if (route !== undefined) start(incoming, (emit) => route.run(incoming.requestId, incoming.payload, emit))
  }

  // Server shutdown: the Hub has already stopped what still ran (its error
  // frames are queued), so close after them with 1001.
  membership.onShutdown(Effect.sync(() => {
    if (!Queue.unsafeOffer(outbound, new Socket.CloseEvent(1001, "server shutting down"))) raw.terminate()
  }))

  yield* socket.runRaw(onFrame).pipe(Effect.ignore)
})
