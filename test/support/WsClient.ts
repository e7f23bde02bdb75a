/**
 * A real WebSocket client (the `ws` package) for integration tests, with
 * helpers to wait for the frames of a request.
 */
import { Data, Deferred, Duration, Effect, FiberId, type Scope } from "effect"
import WebSocket from "ws"
import { type ClientFrame, isFinalFrame, type ServerFrame } from "aibase/protocol"
import * as Wait from "./Wait.js"

export class WsClientError extends Data.TaggedError("WsClientError")<{ readonly message: string }> {}

export interface Closed {
  readonly code: number
  readonly reason: string
}

export interface WsClient {
  readonly raw: WebSocket
  /** Every frame received so far, in order. */
  readonly frames: ReadonlyArray<ServerFrame>
  readonly send: (frame: ClientFrame | string) => void
  /** Waits for a frame (already received or future) that satisfies `predicate`. */
  readonly waitFor: <F extends ServerFrame>(
    predicate: (frame: ServerFrame) => frame is F,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<F, WsClientError>
  /**
   * Waits until `condition` holds for all frames received so far (re-checked
   * on every frame and on close), e.g. "six error frames arrived".
   */
  readonly waitForFrames: (
    condition: (frames: ReadonlyArray<ServerFrame>) => boolean,
    options: { readonly message: string; readonly timeout?: Duration.DurationInput }
  ) => Effect.Effect<ReadonlyArray<ServerFrame>, Wait.WaitTimeout>
  /** Waits for the final frame of `requestId` and returns all its frames. */
  readonly collect: (requestId: string, timeout?: Duration.DurationInput) => Effect.Effect<ReadonlyArray<ServerFrame>, WsClientError>
  /** Sends a request and returns its frames, up to its final one. */
  readonly request: (frame: ClientFrame, timeout?: Duration.DurationInput) => Effect.Effect<ReadonlyArray<ServerFrame>, WsClientError>
  /** Waits for the connection to close (fails after 10 s). */
  readonly closed: Effect.Effect<Closed, Wait.WaitTimeout>
  /** Closes the connection and waits for the close to complete (fails after 10 s). */
  readonly close: (code?: number) => Effect.Effect<Closed, Wait.WaitTimeout>
}

/** The one frame of `type` among a request's frames (fails the test otherwise). */
export const only = <T extends ServerFrame["type"]>(
  frames: ReadonlyArray<ServerFrame>,
  type: T
): Extract<ServerFrame, { readonly type: T }> => {
  const found = frames.filter(frameOf(type))
  const [frame] = found
  if (found.length !== 1 || frame === undefined) {
    throw new Error(`expected one ${type} frame, got ${JSON.stringify(frames)}`)
  }
  return frame
}

export const frameOf = <T extends ServerFrame["type"]>(type: T, requestId?: string) =>
(frame: ServerFrame): frame is Extract<ServerFrame, { readonly type: T }> =>
  frame.type === type && (requestId === undefined || frame.request_id === requestId)

const DEFAULT_TIMEOUT = Duration.seconds(10)

export const connect = (
  url: string,
  options: {
    readonly headers?: Record<string, string>
    /** Answer the server's pings (default true); false makes the client look dead. */
    readonly autoPong?: boolean
  } = {}
): Effect.Effect<WsClient, WsClientError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<WsClient, WsClientError>((resume) => {
      const raw = new WebSocket(url, { headers: options.headers ?? {}, autoPong: options.autoPong ?? true })
      const frames: Array<ServerFrame> = []
      const listeners = new Set<() => void>()
      const closed = Deferred.unsafeMake<Closed>(FiberId.none)
      raw.on("message", (data) => {
        // The tests assert on the shapes; the type only spares them the narrowing.
        frames.push(JSON.parse(data.toString()) as ServerFrame)
        for (const listener of listeners) listener()
      })
      raw.on("close", (code, reason) => {
        Deferred.unsafeDone(closed, Effect.succeed({ code, reason: reason.toString() }))
        for (const listener of listeners) listener()
      })
      raw.on("unexpected-response", (_req, res) => {
        resume(Effect.fail(new WsClientError({ message: `upgrade refused with HTTP ${res.statusCode}` })))
      })
      raw.on("error", (error) => resume(Effect.fail(new WsClientError({ message: error.message }))))

      const waitFor = <F extends ServerFrame>(predicate: (frame: ServerFrame) => frame is F, timeout: Duration.DurationInput = DEFAULT_TIMEOUT) =>
        Effect.async<F, WsClientError>((resume) => {
          const check = () => {
            const found = frames.find(predicate)
            if (found !== undefined) {
              listeners.delete(check)
              resume(Effect.succeed(found))
            }
          }
          listeners.add(check)
          check()
          return Effect.sync(() => listeners.delete(check))
        }).pipe(
          (event) => Wait.awaitEvent(event, { timeout, message: "a matching frame" }),
          Effect.catchTag("WaitTimeout", (timedOut) =>
            Effect.fail(new WsClientError({ message: `${timedOut.message}; got ${frames.length} frames: ${JSON.stringify(frames).slice(0, 1000)}` })))
        )

      const waitForFrames = (
        condition: (frames: ReadonlyArray<ServerFrame>) => boolean,
        options: { readonly message: string; readonly timeout?: Duration.DurationInput }
      ) =>
        Wait.awaitEvent(
          Effect.async<ReadonlyArray<ServerFrame>>((resume) => {
            const check = () => {
              if (condition(frames)) {
                listeners.delete(check)
                resume(Effect.succeed(frames))
              }
            }
            listeners.add(check)
            check()
            return Effect.sync(() => listeners.delete(check))
          }),
          { timeout: options.timeout ?? DEFAULT_TIMEOUT, message: options.message }
        ).pipe(
          Effect.mapError((timeout) =>
            new Wait.WaitTimeout({ message: `${timeout.message}; got ${frames.length} frames: ${JSON.stringify(frames).slice(0, 1000)}` })
          )
        )

      const awaitClosed = Wait.awaitEvent(Deferred.await(closed), { message: `${url} to close` })

      const collect = (requestId: string, timeout?: Duration.DurationInput) =>
        waitFor((frame): frame is ServerFrame => frame.request_id === requestId && isFinalFrame(frame), timeout).pipe(
          Effect.map(() => frames.filter((frame) => frame.request_id === requestId))
        )

      const client: WsClient = {
        raw,
        frames,
        send: (frame) => raw.send(typeof frame === "string" ? frame : JSON.stringify(frame)),
        waitFor,
        waitForFrames,
        collect,
        request: (frame, timeout) =>
          Effect.suspend(() => {
            raw.send(JSON.stringify(frame))
            return collect(frame.request_id, timeout)
          }),
        closed: awaitClosed,
        close: (code) =>
          Effect.suspend(() => {
            if (raw.readyState === WebSocket.OPEN || raw.readyState === WebSocket.CONNECTING) {
              code === undefined ? raw.close() : raw.close(code)
            }
            return awaitClosed
          })
      }
      raw.on("open", () => resume(Effect.succeed(client)))
    }),
    (client) => Effect.sync(() => client.raw.terminate())
  )
