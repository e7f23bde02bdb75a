/**
 * Drops a WebSocket client that stops reading. RpcServer writes its answers
 * without waiting for the client, and ws buffers what the client has not
 * read without limit, so /rpc watches each connection's writes the way /ws
 * does (see WsConnection): a frame that takes the client over
 * WS_MAX_BUFFERED_BYTES is sent with ws's send callback and arms a
 * SERVER_WRITE_TIMEOUT timer, and the timer is cleared once the client is
 * back under the limit. No polling: a connection that keeps up costs a size
 * check per frame and no timer.
 */
import type { Socket } from "@effect/platform"
import { Duration, Effect } from "effect"
import type { WebSocket } from "ws"

export interface Limits {
  readonly maxBufferedBytes: number
  readonly writeTimeout: Duration.Duration
}

/**
 * `socket` (the platform Socket over `ws`) with its writes watched: the
 * client is terminated, and `onDropped` called, when it has stayed over
 * `maxBufferedBytes` for `writeTimeout`.
 */
export const dropWhenNotReading = (
  ws: WebSocket,
  socket: Socket.Socket,
  limits: Limits,
  onDropped: () => void
): Socket.Socket => {
  let timer: ReturnType<typeof setTimeout> | undefined
  // Frames sent over the limit are numbered. Once the last of them has been
  // written, what is still buffered was each sent under the limit, so it is
  // under the limit: the client has caught up.
  let sentOver = 0

  const clear = () => {
    if (timer === undefined) return
    clearTimeout(timer)
    timer = undefined
  }
  const drop = () => {
    timer = undefined
    onDropped()
    ws.terminate()
  }
  ws.once("close", clear)

  /** Sends a frame that takes the client over its buffer, watched by ws's send callback. */
  const sendOver = (chunk: string | Uint8Array) => {
    const n = ++sentOver
    // Armed once while over: a client that stays behind is dropped even if it reads a little.
    timer ??= setTimeout(drop, Duration.toMillis(limits.writeTimeout))
    // The callback runs once this frame (and all before it) reached the OS, or failed on a closed socket.
    ws.send(chunk, () => {
      if (n === sentOver) clear()
    })
  }

  return {
    ...socket,
    writer: Effect.map(socket.writer, (write) => (chunk) => {
      if (typeof chunk !== "string" && !(chunk instanceof Uint8Array)) return write(chunk)
      return Effect.suspend(() => {
        const size = typeof chunk === "string" ? chunk.length : chunk.byteLength
        if (ws.readyState !== ws.OPEN || ws.bufferedAmount + size <= limits.maxBufferedBytes) return write(chunk)
        sendOver(chunk)
        return Effect.void
      })
    })
  }
}
