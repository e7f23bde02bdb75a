/**
 * `npm run bench`: throughput and memory of AIBase against a bare `ws`
 * baseline, side by side in one run on this machine (so compare the ratios,
 * not the absolute numbers: the machine is shared).
 *
 * Servers run as child processes on 127.0.0.1; this process is the client.
 * Every loop is bounded in count and time.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import WebSocket from "ws"

const root = fileURLToPath(new URL("..", import.meta.url))
const PINGS = Number(process.env["BENCH_PINGS"] ?? 20_000)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 3)
const IDLE_CONNECTIONS = Number(process.env["BENCH_CONNECTIONS"] ?? 1000)
const STREAM_CLIENTS = Number(process.env["BENCH_STREAM_CLIENTS"] ?? 50)

interface Server {
  readonly port: number
  readonly child: ChildProcess
}

const start = (script: string, env: Record<string, string> = {}): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", script], {
      cwd: root,
      env: { ...process.env, SERVER_HOST: "127.0.0.1", SERVER_PORT: "0", LLM_PROVIDER: "offline", LOG_LEVEL: "info", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const onData = (chunk: Buffer) => {
      output += chunk.toString()
      const port = output.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/i)?.[1]
      if (port !== undefined) resolve({ port: Number(port), child })
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", (code) => reject(new Error(`${script} exited with ${code}: ${output}`)))
    setTimeout(() => reject(new Error(`${script} did not start: ${output}`)), 20_000).unref()
  })

const stop = (server: Server) =>
  new Promise<void>((resolve) => {
    server.child.once("exit", () => resolve())
    server.child.kill("SIGTERM")
    setTimeout(() => server.child.kill("SIGKILL"), 5_000).unref()
  })

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

    const before = rssKiB(aibase.child.pid ?? 0)
    const idle = await Promise.all(Array.from({ length: IDLE_CONNECTIONS }, () => open(wsUrl)))
    await new Promise((resolve) => setTimeout(resolve, 500))
    const after = rssKiB(aibase.child.pid ?? 0)
    const baseBefore = rssKiB(baseline.child.pid ?? 0)
    const baseIdle = await Promise.all(Array.from({ length: IDLE_CONNECTIONS }, () => open(baseUrl)))
    await new Promise((resolve) => setTimeout(resolve, 500))
    const baseAfter = rssKiB(baseline.child.pid ?? 0)
    const perAiBase = ((after - before) * 1024) / IDLE_CONNECTIONS
    const perBase = ((baseAfter - baseBefore) * 1024) / IDLE_CONNECTIONS
    console.log(`\nMemory for ${IDLE_CONNECTIONS} idle connections (RSS growth)`)
    console.table({
      "bare ws (baseline)": { "KiB per connection": (perBase / 1024).toFixed(1), "vs baseline": "1.00" },
      "AIBase /ws": { "KiB per connection": (perAiBase / 1024).toFixed(1), "vs baseline": (perAiBase / Math.max(perBase, 1)).toFixed(2) }
    })
    for (const socket of [...idle, ...baseIdle]) socket.terminate()
  } finally {
    await Promise.all([stop(baseline), stop(aibase)])
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
