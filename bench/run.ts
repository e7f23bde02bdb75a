/**
 * `npm run bench`: throughput and memory of AIBase against a bare `ws`
 * baseline, side by side in one run on this machine (so compare the ratios,
 * not the absolute numbers: the machine is shared).
 *
 * Servers run as child processes on 127.0.0.1; this process is the client.
 * Every loop is bounded in count and time.
 */
import { readFileSync } from "node:fs"
import WebSocket from "ws"
import * as ServerProcess from "../test/support/ServerProcess.js"

const PINGS = Number(process.env["BENCH_PINGS"] ?? 20_000)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 3)
const IDLE_CONNECTIONS = Number(process.env["BENCH_CONNECTIONS"] ?? 2000)
const STREAM_CLIENTS = Number(process.env["BENCH_STREAM_CLIENTS"] ?? 50)

const start = (script: string, env: Record<string, string> = {}) =>
  ServerProcess.start({ script, env: { LLM_PROVIDER: "offline", LOG_LEVEL: "info", ...env } })

const rssKiB = (pid: number): number => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("VmRSS:"))
  return Number(line?.match(/(\d+)/)?.[1] ?? 0)
}

const open = (url: string) =>
  new Promise<WebSocket>((resolve, reject) => {
    const socket = new WebSocket(url)
    socket.once("open", () => resolve(socket))
    socket.once("error", reject)
  })

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0

/** Sends `count` frames back to back and waits for as many answers; returns frames per second. */
const pipelined = async (url: string, frame: (i: number) => string, count: number): Promise<number> => {
  const socket = await open(url)
  const started = performance.now()
  await new Promise<void>((resolve, reject) => {
    let received = 0
    socket.on("message", () => {
      if (++received === count) resolve()
    })
    setTimeout(() => reject(new Error(`only ${received}/${count} answers`)), 60_000).unref()
    for (let i = 0; i < count; i++) socket.send(frame(i))
  })
  const elapsed = performance.now() - started
  socket.close()
  return count / (elapsed / 1000)
}

const rpcPing = (i: number) => JSON.stringify({ _tag: "Request", id: String(i), tag: "Ping", payload: {}, headers: [] })
const wsPing = (i: number) => JSON.stringify({ type: "ping", request_id: `r${i}` })

/** Pings in windows of `window` (the in-flight limit) so none are refused as overloaded. */
const windowed = async (url: string, frame: (i: number) => string, count: number, window: number) => {
  const socket = await open(url)
  const started = performance.now()
  await new Promise<void>((resolve) => {
    let sent = 0
    let received = 0
    const fill = () => {
      while (sent - received < window && sent < count) socket.send(frame(sent++))
    }
    socket.on("message", () => {
      received++
      if (received === count) resolve()
      else fill()
    })
    fill()
  })
  const elapsed = performance.now() - started
  socket.close()
  return count / (elapsed / 1000)
}

/** `clients` connections each stream one offline completion; returns chunk frames per second. */
const streaming = async (url: string, clients: number) => {
  const sockets = await Promise.all(Array.from({ length: clients }, () => open(url)))
  const content = Array.from({ length: 200 }, (_, i) => `word${i}`).join(" ")
  let chunks = 0
  const started = performance.now()
  await Promise.all(sockets.map((socket, i) =>
    new Promise<void>((resolve) => {
      socket.on("message", (data) => {
        const text = data.toString()
        if (text.startsWith("{\"type\":\"chat_completion_stream_chunk\"")) chunks++
        else resolve()
      })
      socket.send(JSON.stringify({
        type: "chat_completion_stream",
        request_id: `s${i}`,
        payload: { messages: [{ role: "user", content }] }
      }))
    })
  ))
  const elapsed = performance.now() - started
  for (const socket of sockets) socket.close()
  return chunks / (elapsed / 1000)
}

const format = (n: number) => Math.round(n).toLocaleString("en-US")

const main = async () => {
  const baseline = await start("bench/baseline-server.ts")
  const aibase = await start("src/main.ts", { OFFLINE_WORD_DELAY_MS: "0", WS_MAX_IN_FLIGHT: "256" })
  const baseUrl = `ws://127.0.0.1:${baseline.port}`
  const wsUrl = `ws://127.0.0.1:${aibase.port}/ws`
  const rpcUrl = `ws://127.0.0.1:${aibase.port}/rpc`
  try {
    // Warm up both servers' JIT before measuring.
    await windowed(baseUrl, wsPing, 2_000, 256)
    await windowed(wsUrl, wsPing, 2_000, 256)
    await windowed(rpcUrl, rpcPing, 2_000, 256)

    const rates = { baseline: [] as Array<number>, ws: [] as Array<number>, rpc: [] as Array<number> }
    for (let round = 0; round < ROUNDS; round++) {
      rates.baseline.push(await windowed(baseUrl, wsPing, PINGS, 256))
      rates.ws.push(await windowed(wsUrl, wsPing, PINGS, 256))
      rates.rpc.push(await windowed(rpcUrl, rpcPing, PINGS, 256))
    }
    const base = median(rates.baseline)
    console.log(`\nPing round trips, one connection, 256 in flight (${PINGS} per run, median of ${ROUNDS})`)
    console.table({
      "bare ws + JSON (baseline)": { "pings/s": format(base), "vs baseline": "1.00" },
      "AIBase /ws": { "pings/s": format(median(rates.ws)), "vs baseline": (median(rates.ws) / base).toFixed(2) },
      "AIBase /rpc": { "pings/s": format(median(rates.rpc)), "vs baseline": (median(rates.rpc) / base).toFixed(2) }
    })

    const burst = await pipelined(wsUrl, wsPing, 256)
    console.log(`Burst of 256 pipelined pings on /ws: ${format(burst)} pings/s`)

    const chunkRate = await streaming(wsUrl, STREAM_CLIENTS)
    console.log(`\nStreaming: ${STREAM_CLIENTS} clients, offline model without delay: ${format(chunkRate)} chunk frames/s`)
  } finally {
    await Promise.all([ServerProcess.stop(baseline), ServerProcess.stop(aibase)])
  }

  // Memory on fresh processes, so garbage from the runs above does not blur it.
  const idleBaseline = await start("bench/baseline-server.ts")
  const idleAiBase = await start("src/main.ts")
  try {
    const perConnection = async (server: ServerProcess.ServerProcess, url: string) => {
      const warm = await Promise.all(Array.from({ length: 20 }, () => open(url)))
      for (const socket of warm) socket.close()
      await new Promise((resolve) => setTimeout(resolve, 500))
      const before = rssKiB(server.child.pid ?? 0)
      const sockets = await Promise.all(Array.from({ length: IDLE_CONNECTIONS }, () => open(url)))
      await new Promise((resolve) => setTimeout(resolve, 1000))
      const after = rssKiB(server.child.pid ?? 0)
      for (const socket of sockets) socket.terminate()
      return (after - before) / IDLE_CONNECTIONS
    }
    const base = await perConnection(idleBaseline, `ws://127.0.0.1:${idleBaseline.port}`)
    const ours = await perConnection(idleAiBase, `ws://127.0.0.1:${idleAiBase.port}/ws`)
    console.log(`\nMemory for ${IDLE_CONNECTIONS} idle connections (RSS growth of a fresh process)`)
    console.table({
      "bare ws (baseline)": { "KiB per connection": base.toFixed(1), "vs baseline": "1.00" },
      "AIBase /ws": { "KiB per connection": ours.toFixed(1), "vs baseline": (ours / Math.max(base, 0.1)).toFixed(2) }
    })
  } finally {
    await Promise.all([ServerProcess.stop(idleBaseline), ServerProcess.stop(idleAiBase)])
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
