/**
 * Frames sent in one turn leave in one write: `WsConnection` corks the net
 * socket under ws, which ws keeps private. This breaks if ws stops exposing it.
 */
import { describe, expect, it } from "@effect/vitest"
import { Socket } from "node:net"
import WebSocket, { WebSocketServer } from "ws"
import { underlyingSocket } from "../../src/server/WsConnection.js"

const connected = () =>
  new Promise<{ server: WebSocketServer; serverSide: WebSocket; client: WebSocket }>((resolve, reject) => {
    const server = new WebSocketServer({ host: "127.0.0.1", port: 0 })
    server.once("error", reject)
    server.once("listening", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      const client = new WebSocket(`ws://127.0.0.1:${port}`)
      server.once("connection", (serverSide) => resolve({ server, serverSide, client }))
    })
  })

describe("underlyingSocket", () => {
  it("finds the net socket under a ws socket, and corking it joins a turn's frames into one write", async () => {
    const { client, server, serverSide } = await connected()
    try {
      const socket = underlyingSocket(serverSide)
      expect(socket).toBeInstanceOf(Socket)
      if (!(socket instanceof Socket)) return
      let writes = 0
      const writev: unknown = Reflect.get(socket, "_writev")
      const write: unknown = Reflect.get(socket, "_write")
      if (typeof writev !== "function" || typeof write !== "function") throw new Error("net.Socket has no _write/_writev")
      Reflect.set(socket, "_writev", function(this: Socket, ...args: Array<unknown>) {
        writes++
        return Reflect.apply(writev, this, args)
      })
      Reflect.set(socket, "_write", function(this: Socket, ...args: Array<unknown>) {
        writes++
        return Reflect.apply(write, this, args)
      })
      const received: Array<string> = []
      const all = new Promise<void>((resolve) =>
        client.on("message", (data) => {
          received.push(String(data))
          if (received.length === 3) resolve()
        })
      )
      socket.cork()
      serverSide.send("a")
      serverSide.send("b")
      serverSide.send("c")
      process.nextTick(() => socket.uncork())
      await all
      expect(received).toEqual(["a", "b", "c"])
      expect(writes).toBe(1)
    } finally {
      client.terminate()
      await new Promise((resolve) => server.close(resolve))
    }
  })
})
