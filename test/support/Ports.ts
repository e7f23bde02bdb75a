/**
 * A free TCP port on 127.0.0.1: listen on port 0, read the port, close. Nothing
 * listens on it afterwards (until someone binds it), so it also serves as a
 * port that refuses connections.
 */
import { createServer } from "node:net"

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
