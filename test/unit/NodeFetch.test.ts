/**
 * The node:http `fetch` the openai SDK runs on, against a node:http server
 * on 127.0.0.1 in this process: responses (status, headers, json, text),
 * what a request carries, aborting before and during a response (the server
 * sees the request closed), and keep-alive.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "@effect/vitest"
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo, Socket } from "node:net"
import * as NodeFetch from "../../src/openai/NodeFetch.js"
import * as Wait from "../support/Wait.js"

interface Received {
  readonly method: string
  readonly url: string
  readonly headers: IncomingMessage["headers"]
  readonly body: string
  readonly remotePort: number | undefined
}

/** What the server saw of one request, updated as it goes. */
interface Exchange {
  readonly received: Received
  /** The response was closed before it was completely written. */
  closedEarly: boolean
  finished: boolean
}

type Handler = (req: IncomingMessage, res: ServerResponse, exchange: Exchange) => void

let server: Server
let origin: string
let handler: Handler = (_req, res) => res.end()
const exchanges: Array<Exchange> = []
const sockets = new Set<Socket>()
let connections = 0
/** Responses a test holds open; ended after each test. */
const held = new Set<ServerResponse>()

beforeAll(async () => {
  server = createServer({ keepAlive: true }, (req, res) => {
    const parts: Array<Buffer> = []
    req.on("data", (part: Buffer) => parts.push(part))
    req.on("end", () => {
      const exchange: Exchange = {
        received: {
          method: req.method ?? "",
          url: req.url ?? "",
          headers: req.headers,
          body: Buffer.concat(parts).toString("utf8"),
          remotePort: req.socket.remotePort
        },
        closedEarly: false,
        finished: false
      }
      exchanges.push(exchange)
      res.on("finish", () => {
        exchange.finished = true
      })
      res.on("close", () => {
        if (!res.writableFinished) exchange.closedEarly = true
      })
      handler(req, res, exchange)
    })
  })
  server.on("connection", (socket: Socket) => {
    connections++
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})

afterEach(() => {
  for (const res of held) res.destroy()
  held.clear()
  exchanges.length = 0
  handler = (_req, res) => res.end()
})

afterAll(async () => {
  server.closeAllConnections()
  await new Promise<void>((resolve) => server.close(() => resolve()))
})

/** A fetch for one test, closed at its end. */
const withFetch = async <A>(use: (fetch: NodeFetch.NodeFetch["fetch"]) => Promise<A>): Promise<A> => {
  const http = NodeFetch.make()
  try {
    return await use(http.fetch)
  } finally {
    http.close()
  }
}

const awaitExchange = (n = 1) =>
  Wait.waitForPromise(() => exchanges.length >= n, { message: `${n} request(s) to reach the server` })

/** The error a promise rejects with (fails if it resolves). */
const rejection = async (promise: Promise<unknown>): Promise<unknown> => {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error("expected a rejection")
}

const errorName = (error: unknown): string | undefined =>
  typeof error === "object" && error !== null && "name" in error && typeof error.name === "string" ? error.name : undefined

describe("NodeFetch", () => {
  it("exposes status, status text, headers (repeated ones too), url and a JSON body", async () => {
    handler = (_req, res) => {
      res.statusCode = 201
      res.statusMessage = "Created Here"
      res.setHeader("content-type", "application/json")
      res.setHeader("x-request-id", "req-42")
      res.setHeader("x-multi", ["one", "two"])
      res.end(JSON.stringify({ ok: true, list: [1, 2, 3], text: "héllo ✓" }))
    }
    await withFetch(async (fetch) => {
      const response = await fetch(`${origin}/v1/things?x=1`)
      expect(response.status).toBe(201)
      expect(response.ok).toBe(true)
      expect(response.statusText).toBe("Created Here")
      expect(response.url).toBe(`${origin}/v1/things?x=1`)
      expect(response.headers.get("content-type")).toBe("application/json")
      expect(response.headers.get("X-Request-Id")).toBe("req-42")
      expect(response.headers.get("x-multi")).toBe("one, two")
      expect(await response.json()).toEqual({ ok: true, list: [1, 2, 3], text: "héllo ✓" })
    })
    expect(exchanges[0]?.received.method).toBe("GET")
    expect(exchanges[0]?.received.url).toBe("/v1/things?x=1")
  })

  it("reads a text body written in many pieces, multi-byte characters split across them", async () => {
    const text = "päckchen ✓ 😀 ".repeat(500)
    const bytes = Buffer.from(text, "utf8")
    handler = (_req, res) => {
      res.setHeader("content-type", "text/plain; charset=utf-8")
      for (let at = 0; at < bytes.length; at += 7) res.write(bytes.subarray(at, at + 7))
      res.end()
    }
    await withFetch(async (fetch) => {
      const response = await fetch(new URL(`${origin}/text`))
      expect(await response.text()).toBe(text)
    })
  })

  it("a body cut off before its end rejects text() and json() (they do not hang)", async () => {
    handler = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "1000" })
      res.write("{\"object\": \"list\", ")
      // Once the first piece is out, the connection goes: the body never reaches its announced length.
      setTimeout(() => res.destroy(), 20)
    }
    await withFetch(async (fetch) => {
      const first = await fetch(`${origin}/cut`)
      expect(first.status).toBe(200)
      expect(await rejection(first.text())).toBeInstanceOf(Error)
      const second = await fetch(`${origin}/cut`)
      expect(await rejection(second.json())).toBeInstanceOf(Error)
    })
  })

  it("an error status resolves (it is not a network error), with its body", async () => {
    handler = (_req, res) => {
      res.writeHead(429, { "content-type": "application/json", "retry-after-ms": "10" })
      res.end(JSON.stringify({ error: { message: "slow down" } }))
    }
    await withFetch(async (fetch) => {
      const response = await fetch(`${origin}/limited`)
      expect(response.status).toBe(429)
      expect(response.ok).toBe(false)
      expect(response.headers.get("retry-after-ms")).toBe("10")
      expect(await response.json()).toEqual({ error: { message: "slow down" } })
    })
  })

  it("sends the method, headers (a record or Headers) and a string or byte body", async () => {
    handler = (_req, res) => res.end("{}")
    await withFetch(async (fetch) => {
      const json = JSON.stringify({ model: "m", messages: [{ role: "user", content: "héllo" }] })
      const first = await fetch(`${origin}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: "Bearer sk-test", "X-Custom": "yes" },
        body: json
      })
      await first.text()
      const bytes = new TextEncoder().encode("raw ✓ bytes")
      const second = await fetch(`${origin}/v1/embeddings`, {
        method: "PUT",
        headers: new Headers([["x-one", "1"], ["x-two", "2"]]),
        body: bytes
      })
      await second.text()
    })
    const [first, second] = exchanges.map((exchange) => exchange.received)
    expect(first?.method).toBe("POST")
    expect(first?.url).toBe("/v1/chat/completions")
    expect(first?.headers["content-type"]).toBe("application/json")
    expect(first?.headers["authorization"]).toBe("Bearer sk-test")
    expect(first?.headers["x-custom"]).toBe("yes")
    expect(first?.body).toBe(JSON.stringify({ model: "m", messages: [{ role: "user", content: "héllo" }] }))
    expect(second?.method).toBe("PUT")
    expect(second?.headers["x-one"]).toBe("1")
    expect(second?.headers["x-two"]).toBe("2")
    expect(second?.body).toBe("raw ✓ bytes")
  })

  it("a signal aborted before the call rejects with an AbortError, and nothing is sent", async () => {
    const controller = new AbortController()
    controller.abort()
    await withFetch(async (fetch) => {
      const error = await rejection(fetch(`${origin}/never`, { signal: controller.signal }))
      expect(errorName(error)).toBe("AbortError")
    })
    await Wait.expectNothingWithinPromise("100 millis", () => exchanges.length > 0, { message: "request reaching the server" })
  })

  it("aborting before the response arrives rejects with an AbortError, and the server sees the request closed", async () => {
    handler = (_req, res) => {
      held.add(res)
    }
    await withFetch(async (fetch) => {
      const controller = new AbortController()
      const pending = fetch(`${origin}/hang`, { method: "POST", body: "{}", signal: controller.signal })
      await awaitExchange()
      controller.abort()
      const error = await Wait.awaitEventPromise(rejection(pending), { message: "the aborted fetch to reject" })
      expect(errorName(error)).toBe("AbortError")
      await Wait.waitForPromise(() => exchanges[0]?.closedEarly === true, { message: "the server to see the request closed" })
    })
  })

  it("aborting with a reason rejects with that reason", async () => {
    handler = (_req, res) => {
      held.add(res)
    }
    await withFetch(async (fetch) => {
      const controller = new AbortController()
      const pending = fetch(`${origin}/hang`, { signal: controller.signal })
      await awaitExchange()
      const reason = new Error("stopped by the test")
      controller.abort(reason)
      expect(await Wait.awaitEventPromise(rejection(pending), { message: "the aborted fetch to reject" })).toBe(reason)
    })
  })

  it("aborting during a streamed body stops the body (its iteration fails or ends) and the server sees the request closed", async () => {
    handler = (_req, res, exchange) => {
      held.add(res)
      res.writeHead(200, { "content-type": "text/event-stream" })
      res.write("data: {\"n\":0}\n\n")
      // More only while the client is still there: the test aborts after the first.
      const timer = setInterval(() => {
        if (exchange.closedEarly) return clearInterval(timer)
        res.write("data: {\"n\":1}\n\n")
      }, 20)
      res.on("close", () => clearInterval(timer))
    }
    await withFetch(async (fetch) => {
      const controller = new AbortController()
      const response = await fetch(`${origin}/v1/chat/completions`, { method: "POST", body: "{}", signal: controller.signal })
      expect(response.status).toBe(200)
      const body = NodeFetch.incomingOf(response)
      if (body === undefined) return expect.fail("incomingOf gave no IncomingMessage for a NodeFetch response")
      // The SDK iterates `response.body`: it is the message itself.
      expect(response.body).toBe(body)
      const iterator = body[Symbol.asyncIterator]()
      const first = await Wait.awaitEventPromise(iterator.next(), { message: "the first streamed bytes" })
      expect(first.done).toBe(false)
      expect(String(first.value)).toContain("\"n\":0")
      controller.abort()
      // The body must not keep delivering: it fails (AbortError) or ends, within the deadline.
      const outcome = await Wait.awaitEventPromise(
        (async () => {
          try {
            for (;;) {
              const next = await iterator.next()
              if (next.done === true) return "ended"
            }
          } catch (error) {
            // Node reports the destroyed response as `Error: aborted` (ECONNRESET).
            return error instanceof Error ? "failed" : `threw a non-Error: ${String(error)}`
          }
        })(),
        { message: "the aborted body to fail or end" }
      )
      expect(["ended", "failed"]).toContain(outcome)
      await Wait.waitForPromise(() => exchanges[0]?.closedEarly === true, { message: "the server to see the request closed" })
      expect(exchanges[0]?.finished).toBe(false)
    })
  })

  it("incomingOf is undefined for a response that is not this fetch's", () => {
    expect(NodeFetch.incomingOf(new Response("x"))).toBeUndefined()
  })

  it("keep-alive: two sequential requests reuse one connection; close() ends it", async () => {
    handler = (_req, res) => {
      res.setHeader("content-type", "application/json")
      res.end(JSON.stringify({ ok: true }))
    }
    const before = connections
    const http = NodeFetch.make()
    try {
      const first = await http.fetch(`${origin}/one`, { method: "POST", body: "{\"a\":1}" })
      expect(await first.json()).toEqual({ ok: true })
      const second = await http.fetch(`${origin}/two`)
      expect(await second.text()).toBe("{\"ok\":true}")
    } finally {
      http.close()
    }
    expect(exchanges).toHaveLength(2)
    expect(exchanges[0]?.received.remotePort).toBeDefined()
    expect(exchanges[1]?.received.remotePort).toBe(exchanges[0]?.received.remotePort)
    expect(connections - before).toBe(1)
    // close() destroys the pooled connection: the server sees it go.
    await Wait.waitForPromise(() => sockets.size === 0, { message: "the pooled connection to close" })
  })

  it("a connection refused rejects (it does not hang)", async () => {
    const closed = createServer()
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve))
    const port = (closed.address() as AddressInfo).port
    await new Promise<void>((resolve) => closed.close(() => resolve()))
    await withFetch(async (fetch) => {
      const error = await Wait.awaitEventPromise(rejection(fetch(`http://127.0.0.1:${port}/`)), { message: "the refused fetch to reject" })
      expect(String(error)).toContain("ECONNREFUSED")
    })
  })
})
