/**
 * The floor's upstream call: a bare POST to an OpenAI-compatible server on
 * `node:http` (a keep-alive Agent) or on the global `fetch`, with the body
 * handed over as text. The floor proxy (FloorProxy.ts) makes its calls with
 * it, and the model-call measurement (ModelCall.ts) holds AIBase's own
 * model call against it.
 */
import { Agent, request as httpRequest } from "node:http"

export interface Handlers {
  /** A piece of the response body (only with status 200). */
  readonly onData: (text: string) => void
  readonly onEnd: () => void
  readonly onError: (message: string) => void
}

/** POSTs `body` to `path` (under the base URL); returns the abort function. */
export type Post = (path: string, body: string, handlers: Handlers) => () => void

export interface Options {
  /** e.g. http://127.0.0.1:PORT/v1 */
  readonly baseUrl: string
  readonly apiKey: string
  readonly http: "node" | "fetch"
}

export const makePost = (options: Options): Post => {
  const baseUrl = new URL(options.baseUrl)
  const basePath = baseUrl.pathname.replace(/\/$/, "")
  const headers = { "content-type": "application/json", authorization: `Bearer ${options.apiKey}` }
  const agent = new Agent({ keepAlive: true })

  const postNode: Post = (path, body, handlers) => {
    const req = httpRequest({
      agent,
      host: baseUrl.hostname,
      port: baseUrl.port,
      method: "POST",
      path: basePath + path,
      headers: { ...headers, "content-length": Buffer.byteLength(body) }
    }, (res) => {
      res.setEncoding("utf8")
      if (res.statusCode !== 200) {
        let text = ""
        res.on("data", (piece: string) => (text += piece))
        res.on("end", () => handlers.onError(`The upstream answered ${res.statusCode}: ${text.slice(0, 200)}`))
        return
      }
      res.on("data", handlers.onData)
      res.on("end", handlers.onEnd)
      res.on("error", (error) => handlers.onError(error.message))
    })
    req.on("error", (error) => handlers.onError(error.message))
    req.end(body)
    return () => req.destroy()
  }

  const postFetch: Post = (path, body, handlers) => {
    const controller = new AbortController()
    const run = async () => {
      const response = await fetch(`${baseUrl.origin}${basePath}${path}`, {
        method: "POST",
        headers,
        body,
        signal: controller.signal
      })
      if (response.status !== 200 || response.body === null) {
        const text = await response.text()
        return handlers.onError(`The upstream answered ${response.status}: ${text.slice(0, 200)}`)
      }
      const reader = response.body.getReader()
      const decoder = new TextDecoder()
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        handlers.onData(decoder.decode(value, { stream: true }))
      }
      handlers.onEnd()
    }
    run().catch((error: unknown) => {
      if (!controller.signal.aborted) handlers.onError(error instanceof Error ? error.message : String(error))
    })
    return () => controller.abort()
  }

  return options.http === "fetch" ? postFetch : postNode
}
