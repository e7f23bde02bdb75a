/**
 * The baseline for the benchmarks: a bare `ws` server that answers a ping
 * frame the way /ws does (JSON in, JSON out), with none of AIBase's work.
 */
import { WebSocketServer } from "ws"

const server = new WebSocketServer({ host: "127.0.0.1", port: 0 })
server.on("listening", () => {
  const address = server.address()
  if (address !== null && typeof address === "object") console.log(`listening on http://127.0.0.1:${address.port}`)
})
server.on("connection", (socket) => {
  socket.on("message", (data) => {
    const request = JSON.parse(data.toString()) as { request_id: string }
    socket.send(JSON.stringify({ type: "pong", request_id: request.request_id, data: { timestamp: new Date().toISOString() } }))
  })
})
process.on("SIGTERM", () => server.close(() => process.exit(0)))
