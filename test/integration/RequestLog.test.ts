/**
 * The request log: one JSON line per finished model or tool request from
 * the real server process, with what an operator needs and nothing a
 * client said or any secret.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import * as ServerProcess from "../support/ServerProcess.js"
import * as Wait from "../support/Wait.js"
import * as WsClient from "../support/WsClient.js"

const TOKEN = "log-token-0123456789"
const SECRET_TEXT = "my very private question"

const LogLine = Schema.Struct({
  message: Schema.String,
  logLevel: Schema.String,
  annotations: Schema.Struct({
    request_id: Schema.String,
    transport: Schema.String,
    type: Schema.String,
    model: Schema.NullOr(Schema.String),
    status: Schema.String,
    code: Schema.NullOr(Schema.String),
    ttft_ms: Schema.NullOr(Schema.Number),
    duration_ms: Schema.Number,
    input_tokens: Schema.NullOr(Schema.Number),
    output_tokens: Schema.NullOr(Schema.Number),
    tool_rounds: Schema.Number
  })
})
const decodeLine = Schema.decodeUnknownOption(Schema.parseJson(LogLine))

let server: ServerProcess.ServerProcess
beforeAll(async () => {
  server = await ServerProcess.start({ env: { AUTH_TOKENS: TOKEN, OFFLINE_WORD_DELAY_MS: "0", LOG_LEVEL: "info" } })
})
afterAll(async () => {
  if (server !== undefined) await ServerProcess.stop(server)
})

const requestLines = () =>
  server.output().split("\n").flatMap((line) => {
    const decoded = decodeLine(line)
    return decoded._tag === "Some" && decoded.value.message === "request finished" ? [decoded.value.annotations] : []
  })

describe("the request log", () => {
  it.scopedLive("writes one line per finished request, without message text or secrets", () =>
    Effect.gen(function*() {
      const client = yield* WsClient.connect(`ws://127.0.0.1:${server.port}/ws?token=${TOKEN}`)
      yield* client.request({ type: "ping", request_id: "log-ping", payload: {} })
      yield* client.request({
        type: "chat_completion",
        request_id: "log-chat",
        payload: { messages: [{ role: "user", content: SECRET_TEXT }] }
      })
      yield* client.request({
        type: "chat_completion_stream",
        request_id: "log-stream",
        payload: { messages: [{ role: "user", content: "what is 2+3?" }], tools: "registry", auto_execute_tools: true }
      })
      yield* client.request({
        type: "chat_completion",
        request_id: "log-fail",
        payload: { messages: [{ role: "user", content: "offline:fail:rate_limit" }] }
      })

      yield* Wait.waitFor(() => requestLines().length >= 3, { message: "three request lines" })
      const lines = requestLines()
      // Pings are counted in the metrics, not logged.
      expect(lines.map((line) => line.request_id).sort()).toEqual(["log-chat", "log-fail", "log-stream"])

      const chat = lines.find((line) => line.request_id === "log-chat")
      expect(chat).toMatchObject({ transport: "ws", type: "chat_completion", status: "ok", code: null, ttft_ms: null, tool_rounds: 0 })
      expect(chat?.input_tokens).toBeGreaterThan(0)
      expect(chat?.output_tokens).toBeGreaterThan(0)

      const stream = lines.find((line) => line.request_id === "log-stream")
      expect(stream).toMatchObject({ type: "chat_completion_stream", status: "ok" })
      expect(stream?.ttft_ms).toBeGreaterThanOrEqual(0)
      expect(stream?.tool_rounds).toBeGreaterThanOrEqual(1)
      expect(stream?.duration_ms).toBeGreaterThanOrEqual(stream?.ttft_ms ?? 0)

      expect(lines.find((line) => line.request_id === "log-fail")).toMatchObject({ status: "rate_limit", code: "offline_rate_limit" })

      const output = server.output()
      expect(output).not.toContain(SECRET_TEXT)
      expect(output).not.toContain(TOKEN)
    }))
})
