/**
 * Property-based fuzzing of /ws and /rpc against a real server in this
 * process (the offline model, no word delay), with fast-check through
 * effect's `FastCheck`.
 *
 * /ws: batches of generated frames (random JSON of any shape, valid requests
 * of every type with fields mutated to wrong types, huge or odd strings, lone
 * UTF-16 surrogates and prototype keys, very deep nesting, invalid JSON,
 * truncated frames, binary frames) go over one connection. Every frame gets
 * exactly one final frame (`isFinalFrame`), with its request_id when it had a
 * usable one and with `null` otherwise; a valid request gets its own answer;
 * nothing follows a final frame; the connection stays open (a ping
 * round-trips after each batch); and no prototype gains or changes a key.
 *
 * /rpc: batches of @effect/rpc JSON messages and mutations of them (null,
 * numbers, unknown tags, Interrupts and Acks for unknown or unreadable ids,
 * non-numeric ids, malformed headers, invalid payloads for every Rpc, deep
 * nesting, invalid JSON, binary frames, arrays of messages). The server never
 * closes the connection, every well-formed request gets exactly one Exit, and
 * a Ping after each batch is answered.
 *
 * Bounded: a fixed number of runs per property, each batch with a deadline,
 * and a time limit per property. FUZZ_RUNS, FUZZ_SEED and FUZZ_PATH override
 * the defaults (a failure prints the seed and path to replay it).
 */
import { describe, expect, layer } from "@effect/vitest"
import { isFinalFrame } from "aibase/protocol"
import { Effect, FastCheck as fc } from "effect"
import WebSocket from "ws"
import * as TestServer from "../support/TestServer.js"

// ---------------------------------------------------------------------------
// settings

const MAX_MESSAGE_BYTES = 1_048_576
/** How long a batch may take to be answered (a busy 2-core machine). */
const BATCH_DEADLINE_MS = 15_000
/** Per property: stop starting new runs (or shrinking) after this long. */
const PROPERTY_TIME_LIMIT_MS = 17_000

const envNumber = (name: string): number | undefined => {
  const value = process.env[name]
  return value === undefined || value === "" || !Number.isFinite(Number(value)) ? undefined : Number(value)
}

const parameters = <T>(numRuns: number): fc.Parameters<T> => {
  const seed = envNumber("FUZZ_SEED")
  const path = process.env["FUZZ_PATH"]
  return {
    numRuns: envNumber("FUZZ_RUNS") ?? numRuns,
    interruptAfterTimeLimit: PROPERTY_TIME_LIMIT_MS,
    // Shrinking re-runs batches against the server: bound it too.
    ...(seed === undefined ? {} : { seed }),
    ...(path === undefined || path === "" ? {} : { path })
  }
}

const clip = (text: string, max = 1_500): string =>
  text.length > max ? `${text.slice(0, max)}… (${text.length} chars)` : text

const show = (value: unknown, max = 1_500): string => {
  try {
    return clip(typeof value === "string" ? JSON.stringify(value) : fc.stringify(value), max)
  } catch (error) {
    return `(unprintable: ${String(error)})`
  }
}

/** Runs a property and fails with a readable report: the error, the seed and path to replay, the counterexample. */
const check = async <T>(name: string, property: fc.IAsyncPropertyWithHooks<[T]>, numRuns: number) => {
  const startedAt = Date.now()
  const details = await fc.check(property, parameters<[T]>(numRuns))
  const elapsed = Date.now() - startedAt
  if (details.failed) {
    const error = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance)
    throw new Error(
      [
        `${name}: property failed after ${details.numRuns} run(s) and ${details.numShrinks} shrink(s)`,
        `replay: FUZZ_SEED=${details.seed} FUZZ_PATH=${details.counterexamplePath ?? ""} npx vitest run test/integration/Fuzz.test.ts`,
        `error: ${error}`,
        `counterexample: ${details.counterexample === null ? "(none)" : show(details.counterexample[0], 4_000)}`
      ].join("\n")
    )
  }
  // An interrupted run still passes (the time limit), but say how far it got.
  if (details.interrupted) console.warn(`${name}: time limit reached after ${details.numRuns} runs (${elapsed} ms)`)
  return { runs: details.numRuns, elapsed }
}

/** "a ×3, b ×1", the most frequent first. */
const histogram = (values: Iterable<string>): string => {
  const counts = new Map<string, number>()
  for (const value of values) counts.set(value, (counts.get(value) ?? 0) + 1)
  return [...counts].sort((a, b) => b[1] - a[1]).map(([value, count]) => `${value} ×${count}`).join(", ")
}

// ---------------------------------------------------------------------------
// prototypes

const watchedPrototypes: ReadonlyArray<readonly [string, object]> = [
  ["Object.prototype", Object.prototype],
  ["Array.prototype", Array.prototype],
  ["Function.prototype", Function.prototype],
  ["String.prototype", String.prototype]
]

type Snapshot = ReadonlyArray<ReadonlyMap<string | symbol, unknown>>

const snapshotPrototypes = (): Snapshot =>
  watchedPrototypes.map(([, proto]) =>
    new Map(Reflect.ownKeys(proto).map((key) => {
      const descriptor = Object.getOwnPropertyDescriptor(proto, key)
      return [key, descriptor === undefined ? undefined : "value" in descriptor ? descriptor.value : descriptor.get]
    }))
  )

/** What changed on the watched prototypes since `before`, as readable lines. */
const prototypeChanges = (before: Snapshot): Array<string> => {
  const after = snapshotPrototypes()
  const changes: Array<string> = []
  watchedPrototypes.forEach(([name], index) => {
    const was = before[index]
    const now = after[index]
    if (was === undefined || now === undefined) return
    for (const [key, value] of now) {
      if (!was.has(key)) changes.push(`${name} gained ${String(key)}`)
      else if (was.get(key) !== value) changes.push(`${name}.${String(key)} changed`)
    }
    for (const key of was.keys()) if (!now.has(key)) changes.push(`${name} lost ${String(key)}`)
  })
  return changes
}

// ---------------------------------------------------------------------------
// a raw WebSocket client

interface Received {
  readonly text: string
  readonly json: unknown
}

class RawSocket {
  readonly received: Array<Received> = []
  closed: { readonly code: number; readonly reason: string } | undefined
  private readonly listeners = new Set<() => void>()

  private constructor(readonly ws: WebSocket, onMessage?: (socket: RawSocket, message: Received) => void) {
    ws.on("message", (data, isBinary) => {
      const text = Array.isArray(data) ? Buffer.concat(data).toString() : data.toString()
      let json: unknown
      try {
        json = JSON.parse(text)
      } catch {
        json = { unparseable: isBinary ? "binary" : text }
      }
      const message = { text, json }
      this.received.push(message)
      onMessage?.(this, message)
      for (const listener of [...this.listeners]) listener()
    })
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() }
      for (const listener of [...this.listeners]) listener()
    })
    ws.on("error", () => {})
  }

  static open(url: string, onMessage?: (socket: RawSocket, message: Received) => void): Promise<RawSocket> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 10_000 })
      const socket = new RawSocket(ws, onMessage)
      ws.once("open", () => resolve(socket))
      ws.once("error", reject)
      ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused with HTTP ${res.statusCode ?? "?"}`)))
    })
  }

  get open(): boolean {
    return this.closed === undefined && this.ws.readyState === WebSocket.OPEN
  }

  send(data: string | Uint8Array): void {
    if (typeof data === "string") this.ws.send(data)
    else this.ws.send(data, { binary: true })
  }

  /** Resolves once `condition` holds (checked on every message); rejects when the socket closes or at the deadline. */
  until(condition: () => boolean, timeoutMs: number, describe: () => string): Promise<void> {
    return new Promise((resolve, reject) => {
      const done = (error?: Error) => {
        clearTimeout(timer)
        this.listeners.delete(listener)
        if (error === undefined) resolve()
        else reject(error)
      }
      const listener = () => {
        if (condition()) done()
        else if (this.closed !== undefined) {
          done(new Error(`the server closed the connection (${this.closed.code} ${this.closed.reason}); ${describe()}`))
        }
      }
      const timer = setTimeout(() => done(new Error(`no answer within ${timeoutMs} ms; ${describe()}`)), timeoutMs)
      this.listeners.add(listener)
      listener()
    })
  }

  close(): void {
    this.ws.terminate()
  }
}

/** One connection shared by the runs of a property, reopened if a run lost it (the failure is reported by that run). */
const sharedConnection = (url: string, onMessage?: (socket: RawSocket, message: Received) => void) => {
  let current: RawSocket | undefined
  return {
    get: async (): Promise<RawSocket> => {
      if (current === undefined || !current.open) {
        current?.close()
        current = await RawSocket.open(url, onMessage)
      }
      return current
    },
    current: () => current,
    close: () => current?.close()
  }
}

// ---------------------------------------------------------------------------
// generated values shared by both endpoints

type Json = fc.JsonValue

/** JSON.parse gives objects an own `__proto__` key; an assignment would set the prototype instead. */
const defineKey = (target: Record<string, unknown>, key: string, value: unknown): void => {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true })
}

const copyWith = (object: object, key: string, value: unknown): Record<string, unknown> => {
  const copy: Record<string, unknown> = { ...object }
  defineKey(copy, key, value)
  return copy
}

const PROTO_KEYS = ["__proto__", "constructor", "prototype"] as const

/** Objects as an attacker writes them: prototype keys carrying a payload. */
const protoValues: ReadonlyArray<unknown> = [
  JSON.parse("{\"__proto__\":{\"polluted\":\"yes\",\"request_id\":\"polluted\",\"type\":\"ping\"}}"),
  JSON.parse("{\"constructor\":{\"prototype\":{\"polluted\":\"yes\"}}}"),
  JSON.parse("{\"prototype\":{\"polluted\":\"yes\"},\"__proto__\":null}"),
  JSON.parse("{\"__proto__\":[],\"length\":1e9}"),
  JSON.parse("{\"toString\":\"not a function\",\"valueOf\":1,\"hasOwnProperty\":null}")
]

const loneSurrogates = fc.constantFrom("\ud800", "\udfff", "a\ud800b", "\udc00\ud800", "\ud83d", "x\ude00")

const oddStrings = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  loneSurrogates,
  fc.constantFrom("", " ", "\u0000", "\u2028\u2029", "\ufeff", "💥", "null", "undefined", "NaN", "__proto__", "constructor", "toString")
)

/** Long strings of one repeated unit; at most 40,000 units, so three escaped ones still fit in a frame. */
const hugeString = fc.record({
  unit: fc.constantFrom("x", "é", "😀", "\ud800", "\udc00", "\u0000", "\"\\", " ", "\u2028", "<script>"),
  length: fc.constantFrom(1_000, 10_000, 40_000)
}).map(({ length, unit }) => unit.repeat(Math.max(1, Math.floor(length / unit.length))))

interface DeepSpec {
  readonly depth: number
  /** Every `objectEvery`-th level is an object (0: arrays only). */
  readonly objectEvery: number
  readonly key: string
  readonly leaf: Json
}

/** A value nested `depth` levels, built without recursion. */
const buildDeep = ({ depth, key, leaf, objectEvery }: DeepSpec): unknown => {
  let value: unknown = leaf
  for (let level = 0; level < depth; level++) {
    if (objectEvery > 0 && level % objectEvery === 0) {
      const object: Record<string, unknown> = {}
      defineKey(object, key, value)
      value = object
    } else {
      value = [value]
    }
  }
  return value
}

const deepSpec = (maxDepth: number): fc.Arbitrary<DeepSpec> =>
  fc.record({
    depth: fc.integer({ min: 1, max: maxDepth }),
    objectEvery: fc.integer({ min: 0, max: 3 }),
    key: fc.constantFrom("a", "", "__proto__", "constructor", "prototype", "request_id", "type", "payload"),
    leaf: fc.jsonValue({ maxDepth: 1 })
  })

/** JSON text nesting `depth` levels (up to far beyond anything a recursive parser survives). */
interface DeepTextSpec {
  readonly depth: number
  readonly open: "[" | "{\"a\":"
}

const deepText = ({ depth, open }: DeepTextSpec): string =>
  `${open.repeat(depth)}1${(open === "[" ? "]" : "}").repeat(depth)}`

const deepTextSpec: fc.Arbitrary<DeepTextSpec> = fc.record({
  depth: fc.constantFrom(65, 200, 1_000, 3_000, 10_000, 100_000),
  open: fc.constantFrom("[" as const, "{\"a\":" as const)
})

/** Values of the wrong type for any field. */
const weirdValue: fc.Arbitrary<unknown> = fc.oneof(
  { arbitrary: fc.constantFrom<unknown>(null, true, false, 0, -0, -1, 1.5, 1e308, -1e-308, 2 ** 53 + 1, [], {}), weight: 3 },
  { arbitrary: fc.integer(), weight: 1 },
  { arbitrary: fc.double(), weight: 1 },
  { arbitrary: oddStrings, weight: 4 },
  { arbitrary: hugeString, weight: 1 },
  { arbitrary: fc.jsonValue({ maxDepth: 3 }), weight: 3 },
  { arbitrary: fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 4 }), weight: 1 },
  { arbitrary: fc.constantFrom(...protoValues), weight: 2 },
  { arbitrary: deepSpec(300).map(buildDeep), weight: 1 }
)

/** Every path to a value inside `value` (the root is `[]`). */
const pathsOf = (value: unknown): Array<Array<string | number>> => {
  const paths: Array<Array<string | number>> = []
  const stack: Array<readonly [unknown, Array<string | number>]> = [[value, []]]
  while (stack.length > 0 && paths.length < 200) {
    const [current, path] = stack.pop()!
    paths.push(path)
    if (Array.isArray(current)) current.forEach((item, index) => stack.push([item, [...path, index]]))
    else if (typeof current === "object" && current !== null) {
      for (const key of Object.keys(current)) stack.push([(current as Record<string, unknown>)[key], [...path, key]])
    }
  }
  return paths.sort((a, b) => a.join("\u0000").localeCompare(b.join("\u0000")))
}

type Mutation =
  | { readonly op: "set"; readonly at: number; readonly value: unknown }
  | { readonly op: "delete"; readonly at: number }
  | { readonly op: "protoKey"; readonly at: number; readonly key: typeof PROTO_KEYS[number]; readonly value: unknown }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant("set" as const), at: fc.nat(), value: weirdValue }), weight: 5 },
  { arbitrary: fc.record({ op: fc.constant("delete" as const), at: fc.nat() }), weight: 2 },
  {
    arbitrary: fc.record({
      op: fc.constant("protoKey" as const),
      at: fc.nat(),
      key: fc.constantFrom(...PROTO_KEYS),
      value: fc.oneof(fc.constantFrom(...protoValues), weirdValue)
    }),
    weight: 2
  }
)

const DELETE: unique symbol = Symbol("delete")

/** `value` with `update` applied at `path`, copying along the path (the generated values stay untouched). */
const updateAt = (
  value: unknown,
  path: ReadonlyArray<string | number>,
  update: (old: unknown) => unknown
): unknown => {
  if (path.length === 0) {
    const updated = update(value)
    return updated === DELETE ? null : updated
  }
  const [head, ...rest] = path
  const apply = (child: unknown) => (rest.length === 0 ? update(child) : updateAt(child, rest, update))
  if (Array.isArray(value) && typeof head === "number") {
    const copy: Array<unknown> = [...value]
    const next = apply(copy[head])
    if (next === DELETE) copy.splice(head, 1)
    else copy[head] = next
    return copy
  }
  if (typeof value === "object" && value !== null && typeof head === "string") {
    const object = value as Record<string, unknown>
    const next = apply(object[head])
    const copy: Record<string, unknown> = {}
    for (const key of Object.keys(object)) {
      if (key !== head) defineKey(copy, key, object[key])
      else if (next !== DELETE) defineKey(copy, key, next)
    }
    return copy
  }
  return value
}

const applyMutations = (base: unknown, mutations: ReadonlyArray<Mutation>): unknown =>
  mutations.reduce<unknown>((value, m) => {
    const paths = pathsOf(value)
    switch (m.op) {
      case "set": {
        const path = paths[m.at % paths.length] ?? []
        return updateAt(value, path, () => m.value)
      }
      case "delete": {
        const candidates = paths.filter((path) => path.length > 0)
        const path = candidates[m.at % Math.max(1, candidates.length)]
        return path === undefined ? value : updateAt(value, path, () => DELETE)
      }
      case "protoKey": {
        const objects = paths.filter((path) => {
          let node: unknown = value
          for (const step of path) node = (node as Record<string | number, unknown>)[step]
          return typeof node === "object" && node !== null && !Array.isArray(node)
        })
        const path = objects[m.at % Math.max(1, objects.length)]
        return path === undefined
          ? value
          : updateAt(value, path, (old) => copyWith(old as object, m.key, m.value))
      }
    }
  }, base)

/** Replaces `"\u0001DEEP\u0001"` in encoded JSON with `deep` (JSON text). */
const DEEP_MARK = "\u0001DEEP\u0001"
const withDeepText = (value: unknown, deep: string): string => JSON.stringify(value).replace(JSON.stringify(DEEP_MARK), deep)

// ---------------------------------------------------------------------------
// /ws frames

const REQUEST_KINDS = [
  "ping",
  "chat_completion",
  "chat_completion_stream",
  "embedding",
  "tools_list",
  "tool_execute",
  "calculator",
  "cancel"
] as const
type RequestKind = typeof REQUEST_KINDS[number]

/** The final frame type of each valid request. */
const SUCCESS_FINAL: Record<RequestKind, string> = {
  ping: "pong",
  chat_completion: "chat_completion_response",
  chat_completion_stream: "chat_completion_stream_end",
  embedding: "embedding_response",
  tools_list: "tools_list_response",
  tool_execute: "tool_execute_response",
  calculator: "tool_execute_response",
  cancel: "cancel_response"
}

interface Context {
  /** The ids of this batch's frames, by position (cancel targets point into it). */
  readonly ids: ReadonlyArray<string>
}

/** A valid request of `kind` with `requestId`; `target` picks a cancel's target; `text` varies a field. */
const validRequest = (kind: RequestKind, requestId: string, target: number | string, text: string, context: Context) => {
  const frame = (type: string, payload?: unknown) => ({ type, request_id: requestId, ...(payload === undefined ? {} : { payload }) })
  switch (kind) {
    case "ping":
      return frame("ping", target === 0 ? undefined : {})
    case "chat_completion":
      return frame("chat_completion", {
        messages: [{ role: "system", content: "Be brief." }, { role: "user", content: text }],
        model: "gpt-4o-mini",
        max_tokens: 50,
        temperature: 0.5,
        stop: ["\n\n"],
        user: "fuzz"
      })
    case "chat_completion_stream":
      return frame("chat_completion_stream", {
        messages: [{ role: "user", content: [{ type: "text", text: `What is 2+3? ${text}` }] }],
        tools: ["calculator", { name: "lookup", description: "Looks up a thing", parameters: { type: "object", properties: {} } }],
        auto_execute_tools: true,
        max_tool_rounds: 2
      })
    case "embedding":
      return frame("embedding", { input: [text, "dog"], dimensions: 8 })
    case "tools_list":
      return frame("tools_list", {})
    case "tool_execute":
      return frame("tool_execute", {
        tool_call: { id: "call_1", type: "function", function: { name: "get_weather", arguments: JSON.stringify({ location: text }) } }
      })
    case "calculator":
      return frame("tool_execute", {
        tool_call: { id: "call_2", type: "function", function: { name: "calculator", arguments: JSON.stringify({ expression: text }) } }
      })
    case "cancel": {
      const targetId = typeof target === "number" ? context.ids[target % Math.max(1, context.ids.length)] ?? "none" : target
      return frame("cancel", { request_id: targetId })
    }
  }
}

/** How the generator varies the request_id a frame keeps (it is always made unique). */
const ID_SUFFIXES = ["", "é", "\ud800", "😀", " ", "\u0000", "\"\\", "x".repeat(100)] as const

type WsSpec =
  | {
    readonly kind: "valid"
    readonly request: RequestKind
    readonly idSuffix: number
    readonly target: number | string
    readonly text: string
  }
  | {
    readonly kind: "mutated"
    readonly request: RequestKind
    readonly idSuffix: number
    readonly target: number | string
    readonly text: string
    readonly mutations: ReadonlyArray<Mutation>
  }
  /** Any JSON; a usable top-level request_id is made unique. */
  | { readonly kind: "json"; readonly value: Json }
  /** An envelope with a unique id around a random type and payload. */
  | { readonly kind: "envelope"; readonly type: unknown; readonly payload: unknown; readonly extra: Json }
  /** A valid request with a deeply nested value (object-level) at one of its fields. */
  | { readonly kind: "deep"; readonly request: RequestKind; readonly at: number; readonly deep: DeepSpec }
  /** Deeply nested JSON text, alone or at a field of a valid request. */
  | { readonly kind: "deepText"; readonly where: DeepWhere; readonly deep: DeepTextSpec }
  /** Arbitrary text, mostly not JSON. */
  | { readonly kind: "text"; readonly text: string }
  /** A valid frame cut short. */
  | { readonly kind: "truncated"; readonly request: RequestKind; readonly cut: number }
  | { readonly kind: "binary"; readonly bytes: Uint8Array }

const DEEP_WHERE = ["top", "payload", "content", "request_id", "type", "input", "cancel", "tool_parameters", "tool_arguments"] as const
type DeepWhere = typeof DEEP_WHERE[number]

const calculatorText = fc.oneof(
  fc.string({ unit: fc.constantFrom(..."0123456789+-*/%^(). ,episqrtabsminmaxlog".split("")), maxLength: 60 }),
  fc.integer({ min: 1, max: 5_000 }).map((n) => `${"(".repeat(n)}1${")".repeat(n)}`),
  fc.integer({ min: 1, max: 5_000 }).map((n) => "-".repeat(n) + "1"),
  fc.constantFrom("1/0", "0/0", "2^1024", "sqrt(-1)", "9".repeat(400), "1e999", "pi^e^pi^e", "max()", "log(0)")
)

/** A position in the batch, or another usable request_id. */
const cancelTarget = fc.oneof(fc.nat(30), oddStrings.filter((s) => s.length > 0))

const requestText = fc.oneof(
  { arbitrary: fc.constantFrom("Hello there", "What is the weather in Paris?", "What time is it in Tokyo?"), weight: 3 },
  { arbitrary: oddStrings.filter((s) => s.length > 0), weight: 2 }
)

const wsSpec: fc.Arbitrary<WsSpec> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant("valid" as const),
      request: fc.constantFrom(...REQUEST_KINDS),
      idSuffix: fc.nat(ID_SUFFIXES.length - 1),
      target: cancelTarget,
      text: requestText
    }).chain((spec) =>
      spec.request === "calculator" ? calculatorText.map((text) => ({ ...spec, text })) : fc.constant(spec)
    ),
    weight: 4
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("mutated" as const),
      request: fc.constantFrom(...REQUEST_KINDS),
      idSuffix: fc.nat(ID_SUFFIXES.length - 1),
      target: cancelTarget,
      text: requestText,
      mutations: fc.array(mutation, { minLength: 1, maxLength: 3 })
    }),
    weight: 8
  },
  { arbitrary: fc.record({ kind: fc.constant("json" as const), value: fc.jsonValue({ maxDepth: 5 }) }), weight: 2 },
  {
    arbitrary: fc.record({
      kind: fc.constant("envelope" as const),
      type: fc.oneof(fc.constantFrom(...REQUEST_KINDS, "error", "pong", "__proto__", "constructor", "toString"), weirdValue),
      payload: weirdValue,
      extra: fc.jsonValue({ maxDepth: 2 })
    }),
    weight: 2
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("deep" as const),
      request: fc.constantFrom(...REQUEST_KINDS),
      at: fc.nat(),
      deep: deepSpec(400)
    }),
    weight: 2
  },
  {
    arbitrary: fc.record({ kind: fc.constant("deepText" as const), where: fc.constantFrom(...DEEP_WHERE), deep: deepTextSpec }),
    weight: 1
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("text" as const),
      text: fc.oneof(
        fc.string({ maxLength: 60 }),
        fc.string({ unit: "binary", maxLength: 60 }),
        loneSurrogates,
        fc.constantFrom(
          "",
          "{",
          "}",
          "[1,]",
          "{\"a\":1,}",
          "NaN",
          "undefined",
          "'x'",
          "\ufeff{}",
          "{}{}",
          "\u0000",
          "{\"type\":\"ping\",\"request_id\":\"ID\"",
          "{\"type\":\"ping\",\"request_id\":\"ID\"}}",
          "[{\"type\":\"ping\",\"request_id\":\"ID\"}]",
          "{\"type\":\"ping\",\"request_id\":\"\\uD800ID\"}",
          "{\"type\":\"ping\",\"request_id\":\"ID\",\"request_id\":5}",
          "{\"type\":\"ping\",\"request_id\":5,\"request_id\":\"ID\"}",
          "{\"__proto__\":{\"request_id\":\"ID\"},\"type\":\"ping\"}",
          "\"{\\\"type\\\":\\\"ping\\\"}\""
        )
      )
    }),
    weight: 2
  },
  {
    arbitrary: fc.record({ kind: fc.constant("truncated" as const), request: fc.constantFrom(...REQUEST_KINDS), cut: fc.nat() }),
    weight: 1
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("binary" as const),
      bytes: fc.oneof(
        fc.uint8Array({ maxLength: 200 }),
        fc.constant(new TextEncoder().encode("{\"type\":\"ping\",\"request_id\":\"b\"}"))
      )
    }),
    weight: 1
  }
)

interface SentFrame {
  readonly index: number
  readonly spec: WsSpec
  readonly data: string | Uint8Array
  /** The request_id its answer must carry (null: the frame has no usable one). */
  readonly expectedId: string | null
  /** The final frame type of a valid, unmutated request. */
  readonly successFinal: string | undefined
}

/** What the server reads from a text frame: the UTF-8 of the string (lone surrogates become U+FFFD). */
const asReceived = (text: string): string => Buffer.from(text, "utf8").toString("utf8")

const isUsableId = (id: unknown): id is string => typeof id === "string" && id.length >= 1 && id.length <= 128

/** The request_id a frame's answer must carry, judged from the frame as the server receives it. */
const expectedIdOf = (data: string | Uint8Array): string | null => {
  if (typeof data !== "string") return null
  let json: unknown
  try {
    json = JSON.parse(asReceived(data))
  } catch {
    return null
  }
  if (typeof json !== "object" || json === null || Array.isArray(json) || !Object.hasOwn(json, "request_id")) return null
  const id = (json as { readonly request_id?: unknown }).request_id
  return isUsableId(id) ? id : null
}

const deepFieldFrame = (where: DeepWhere, requestId: string, context: Context): unknown => {
  switch (where) {
    case "top":
      return DEEP_MARK
    case "payload":
      return { type: "chat_completion", request_id: requestId, payload: DEEP_MARK }
    case "content":
      return { type: "chat_completion_stream", request_id: requestId, payload: { messages: [{ role: "user", content: DEEP_MARK }] } }
    case "request_id":
      return { type: "ping", request_id: DEEP_MARK }
    case "type":
      return { type: DEEP_MARK, request_id: requestId }
    case "input":
      return { type: "embedding", request_id: requestId, payload: { input: DEEP_MARK } }
    case "cancel":
      return { type: "cancel", request_id: requestId, payload: DEEP_MARK }
    case "tool_parameters":
      return {
        type: "chat_completion",
        request_id: requestId,
        payload: { messages: [{ role: "user", content: "hi" }], tools: [{ name: "t", description: "d", parameters: DEEP_MARK }] }
      }
    case "tool_arguments":
      return validRequest("calculator", requestId, 0, "1", context)
  }
}

/** Turns a batch's specs into frames with unique request_ids (`nextId` hands them out). */
const realizeBatch = (specs: ReadonlyArray<WsSpec>, nextId: () => string): Array<SentFrame> => {
  const ids = specs.map((spec) => {
    const base = nextId()
    return "idSuffix" in spec ? (base + ID_SUFFIXES[spec.idSuffix]).slice(0, 128) : base
  })
  const context: Context = { ids }
  const frames: Array<SentFrame> = []
  specs.forEach((spec, index) => {
    const id = ids[index] ?? nextId()
    let data: string | Uint8Array
    let successFinal: string | undefined
    switch (spec.kind) {
      case "valid":
        data = JSON.stringify(validRequest(spec.request, id, spec.target, spec.text, context))
        successFinal = SUCCESS_FINAL[spec.request]
        break
      case "mutated":
        data = JSON.stringify(applyMutations(validRequest(spec.request, id, spec.target, spec.text, context), spec.mutations))
        break
      case "json": {
        const value = spec.value
        const keepsId = typeof value === "object" && value !== null && !Array.isArray(value) && isUsableId(value["request_id"])
        data = JSON.stringify(keepsId ? copyWith(value, "request_id", id) : value)
        break
      }
      case "envelope": {
        const extra = typeof spec.extra === "object" && spec.extra !== null && !Array.isArray(spec.extra) ? spec.extra : {}
        data = JSON.stringify({ ...extra, type: spec.type, request_id: id, payload: spec.payload })
        break
      }
      case "deep": {
        const base = validRequest(spec.request, id, 0, "hi", context)
        const paths = pathsOf(base).filter((path) => path.length > 0 && path[0] !== "request_id")
        const path = paths[spec.at % paths.length] ?? ["payload"]
        data = JSON.stringify(updateAt(base, path, () => buildDeep(spec.deep)))
        break
      }
      case "deepText": {
        const text = deepText(spec.deep)
        data = spec.where === "tool_arguments"
          ? JSON.stringify(updateAt(deepFieldFrame(spec.where, id, context), ["payload", "tool_call", "function", "arguments"], () => text))
          : withDeepText(deepFieldFrame(spec.where, id, context), text)
        break
      }
      case "text":
        data = spec.text.replaceAll("ID", id.replace(/["\\]/g, "").replace(/[\u0000-\u001f]/g, "") || "z")
        break
      case "truncated": {
        const whole = JSON.stringify(validRequest(spec.request, id, 0, "hi", context))
        data = whole.slice(0, spec.cut % whole.length)
        break
      }
      case "binary":
        data = spec.bytes
        break
    }
    // Frames over the limit close the connection by design (1009); the generators stay under it.
    const bytes = typeof data === "string" ? Buffer.byteLength(data) : data.byteLength
    if (bytes >= MAX_MESSAGE_BYTES) throw new Error(`generator bug: a ${bytes}-byte frame (${spec.kind})`)
    frames.push({ index, spec, data, expectedId: expectedIdOf(data), successFinal })
  })
  return frames
}

interface WsFrame {
  readonly type: string
  readonly request_id: string | null
  readonly data?: { readonly category?: string; readonly code?: string }
}

const isWsFrame = (json: unknown): json is WsFrame =>
  typeof json === "object" && json !== null && "type" in json && typeof json.type === "string" &&
  "request_id" in json && (json.request_id === null || typeof json.request_id === "string")

const describeFrame = (frame: SentFrame): string =>
  `frame #${frame.index} (${frame.spec.kind}${"request" in frame.spec ? ` ${frame.spec.request}` : ""}) ${
    typeof frame.data === "string" ? show(frame.data, 600) : `binary ${frame.data.byteLength} bytes`
  }`

/** Everything received on /ws, grouped by request_id, across all runs of the property. */
class WsLedger {
  /** How many frames sent with each id (more than one only when a generator repeated one). */
  readonly expected = new Map<string, number>()
  readonly byId = new Map<string, Array<WsFrame>>()
  nullFrames = 0
  expectedNull = 0
  readonly stray: Array<string> = []
  private seen = 0

  /** Files the socket's new messages. */
  absorb(socket: RawSocket): void {
    for (; this.seen < socket.received.length; this.seen++) {
      const message = socket.received[this.seen]
      if (message === undefined) continue
      if (!isWsFrame(message.json)) {
        this.stray.push(clip(message.text, 300))
        continue
      }
      const id = message.json.request_id
      if (id === null) {
        this.nullFrames++
        if (message.json.type !== "error") this.stray.push(`a ${message.json.type} frame without a request_id`)
        continue
      }
      const frames = this.byId.get(id)
      if (frames === undefined) this.byId.set(id, [message.json])
      else frames.push(message.json)
    }
  }

  reset(): void {
    this.seen = 0
  }

  finals(id: string): number {
    return (this.byId.get(id) ?? []).filter(isFinalFrame).length
  }
}

// ---------------------------------------------------------------------------
// /rpc frames

const RPC_TAGS = ["Ping", "ChatCompletion", "ChatCompletionStream", "Embedding", "ToolsList", "ToolExecute"] as const
type RpcTag = typeof RPC_TAGS[number]

const validRpcPayload = (tag: RpcTag, text: string): unknown => {
  switch (tag) {
    case "Ping":
    case "ToolsList":
      return {}
    case "ChatCompletion":
    case "ChatCompletionStream":
      return { messages: [{ role: "user", content: text }], max_tokens: 20 }
    case "Embedding":
      return { input: text, dimensions: 4 }
    case "ToolExecute":
      return {
        tool_call: { id: "c1", type: "function", function: { name: "calculator", arguments: JSON.stringify({ expression: "6*7" }) } }
      }
  }
}

type IdSpec =
  | "fresh"
  | "freshNumber"
  | "leadingZero"
  | "negative"
  | "recent"
  | "huge"
  | "float"
  | "word"
  | { readonly value: unknown }

type RpcSpec =
  | {
    readonly kind: "request"
    readonly tag: RpcTag | { readonly other: string }
    readonly id: IdSpec
    readonly payload: "valid" | { readonly mutations: ReadonlyArray<Mutation> } | { readonly value: unknown } | "missing"
    readonly headers: "none" | "empty" | "pairs" | { readonly value: unknown }
    readonly text: string
    readonly extraKeys: ReadonlyArray<typeof PROTO_KEYS[number]>
  }
  | { readonly kind: "interrupt" | "ack"; readonly requestId: "recent" | "unknown" | { readonly value: unknown } }
  | { readonly kind: "eof" | "ping" }
  | { readonly kind: "json"; readonly value: unknown }
  | { readonly kind: "tagged"; readonly tag: unknown; readonly rest: Json }
  | { readonly kind: "text"; readonly text: string }
  | { readonly kind: "deepText"; readonly deep: DeepTextSpec; readonly inPayload: boolean }
  | { readonly kind: "binary"; readonly bytes: Uint8Array }
  | { readonly kind: "array"; readonly items: ReadonlyArray<RpcSpec> }

const idSpec: fc.Arbitrary<IdSpec> = fc.oneof(
  { arbitrary: fc.constant("fresh" as const), weight: 10 },
  {
    arbitrary: fc.constantFrom<IdSpec>("freshNumber", "leadingZero", "negative", "recent", "huge", "float", "word"),
    weight: 4
  },
  { arbitrary: weirdValue.map((value) => ({ value })), weight: 2 }
)

const rpcRequestSpec = fc.record({
  kind: fc.constant("request" as const),
  tag: fc.oneof(
    { arbitrary: fc.constantFrom(...RPC_TAGS), weight: 6 },
    { arbitrary: fc.oneof(oddStrings, fc.constantFrom("Cancel", "ping", "__proto__", "constructor")).map((other) => ({ other })), weight: 1 }
  ),
  id: idSpec,
  payload: fc.oneof(
    { arbitrary: fc.constant("valid" as const), weight: 4 },
    { arbitrary: fc.array(mutation, { minLength: 1, maxLength: 3 }).map((mutations) => ({ mutations })), weight: 4 },
    { arbitrary: weirdValue.map((value) => ({ value })), weight: 2 },
    { arbitrary: fc.constant("missing" as const), weight: 1 }
  ),
  headers: fc.oneof(
    { arbitrary: fc.constantFrom("none" as const, "empty" as const, "pairs" as const), weight: 4 },
    {
      arbitrary: fc.oneof(
        fc.constantFrom<unknown>([null], [[null, null]], [["a"]], [[1, "a"]], [["a", 1]], { a: 1 }, { a: "1" }, "x", 5, null),
        weirdValue
      ).map((value) => ({ value })),
      weight: 2
    }
  ),
  text: requestText,
  extraKeys: fc.subarray([...PROTO_KEYS], { maxLength: 2 })
})

const rpcLeafSpec: fc.Arbitrary<RpcSpec> = fc.oneof(
  { arbitrary: rpcRequestSpec, weight: 10 },
  {
    arbitrary: fc.record({
      kind: fc.constantFrom("interrupt" as const, "ack" as const),
      requestId: fc.oneof(
        fc.constantFrom("recent" as const, "unknown" as const),
        weirdValue.map((value) => ({ value }))
      )
    }),
    weight: 3
  },
  { arbitrary: fc.record({ kind: fc.constantFrom("eof" as const, "ping" as const) }), weight: 1 },
  {
    arbitrary: fc.record({
      kind: fc.constant("json" as const),
      value: fc.oneof(fc.constantFrom<unknown>(null, 0, 5, -1, "x", true, [], {}), fc.jsonValue({ maxDepth: 4 }), weirdValue)
    }),
    weight: 3
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("tagged" as const),
      tag: fc.oneof(fc.constantFrom<unknown>("Exit", "Chunk", "Defect", "Pong", "ClientEnd", "Request", null, 1, {}), oddStrings),
      rest: fc.jsonValue({ maxDepth: 3 })
    }),
    weight: 2
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("text" as const),
      text: fc.oneof(
        fc.string({ maxLength: 60 }),
        loneSurrogates,
        fc.constantFrom("", "{", "[", "[{}", "{\"_tag\":\"Request\"", "\ufeff{}", "{}{}", "\u0000")
      )
    }),
    weight: 2
  },
  {
    arbitrary: fc.record({ kind: fc.constant("deepText" as const), deep: deepTextSpec, inPayload: fc.boolean() }),
    weight: 1
  },
  { arbitrary: fc.record({ kind: fc.constant("binary" as const), bytes: fc.uint8Array({ maxLength: 100 }) }), weight: 1 }
)

const rpcSpec: fc.Arbitrary<RpcSpec> = fc.oneof(
  { arbitrary: rpcLeafSpec, weight: 12 },
  { arbitrary: fc.record({ kind: fc.constant("array" as const), items: fc.array(rpcLeafSpec, { maxLength: 4 }) }), weight: 1 }
)

interface RpcSent {
  readonly spec: RpcSpec
  readonly data: string | Uint8Array
  readonly realized: RealizedRpc | undefined
}

const canonicalId = (id: unknown): string | undefined => {
  if (typeof id !== "string" && typeof id !== "number") return undefined
  try {
    return BigInt(id).toString()
  } catch {
    return undefined
  }
}

/** State of the /rpc property across runs: the id counter and the ids used so far. */
interface RpcState {
  nextId: number
  /** Ids of requests sent so far, canonical, most recent last. */
  readonly recent: Array<string>
}

/** The message a spec stands for, and the ids it must get Exits for (only requests that are certainly well-formed). */
interface RealizedRpc {
  readonly message: unknown
  /** Fresh ids of requests that are certainly well-formed: each must get an Exit. */
  readonly mustAnswer: ReadonlyArray<string>
  /** The canonical ids of every request in the message (to spot ids used twice in a batch). */
  readonly requestIds: ReadonlyArray<string>
}

const realizeRpc = (spec: RpcSpec, state: RpcState): RealizedRpc | string | Uint8Array => {
  const fresh = () => String(state.nextId++)
  const recent = () => state.recent[state.recent.length - 1] ?? "1"
  switch (spec.kind) {
    case "request": {
      let id: unknown
      let certain = false
      switch (spec.id) {
        case "fresh":
          id = fresh()
          certain = true
          break
        case "freshNumber":
          id = state.nextId++
          break
        case "leadingZero":
          id = `00${recent()}`
          break
        case "negative":
          id = `-${fresh()}`
          break
        case "recent":
          id = recent()
          break
        case "huge":
          id = "9".repeat(60)
          break
        case "float":
          id = `${fresh()}.5`
          break
        case "word":
          id = `id-${fresh()}`
          break
        default:
          id = spec.id.value
      }
      const tag = typeof spec.tag === "string" ? spec.tag : spec.tag.other
      const base = validRpcPayload(typeof spec.tag === "string" ? spec.tag : "Ping", spec.text)
      const payload = spec.payload === "valid"
        ? base
        : spec.payload === "missing"
        ? undefined
        : "mutations" in spec.payload
        ? applyMutations(base, spec.payload.mutations)
        : spec.payload.value
      const headers = spec.headers === "none"
        ? undefined
        : spec.headers === "empty"
        ? []
        : spec.headers === "pairs"
        ? [["x-fuzz", "1"], ["__proto__", "x"]]
        : spec.headers.value
      let message: Record<string, unknown> = { _tag: "Request", id, tag }
      if (spec.payload !== "missing") defineKey(message, "payload", payload)
      if (headers !== undefined) defineKey(message, "headers", headers)
      for (const key of spec.extraKeys) message = copyWith(message, key, { polluted: "yes", _tag: "Interrupt" })
      const canonical = canonicalId(id)
      if (canonical !== undefined) state.recent.push(canonical)
      if (state.recent.length > 50) state.recent.splice(0, state.recent.length - 50)
      // A fresh id and a tag the server serves: answered whatever the payload and headers are.
      const served = typeof spec.tag === "string"
      return {
        message,
        mustAnswer: certain && served && canonical !== undefined ? [canonical] : [],
        requestIds: canonical === undefined ? [] : [canonical]
      }
    }
    case "interrupt":
    case "ack": {
      const requestId = spec.requestId === "recent"
        ? recent()
        : spec.requestId === "unknown"
        ? String(9_000_000 + state.nextId++)
        : spec.requestId.value
      return { message: { _tag: spec.kind === "interrupt" ? "Interrupt" : "Ack", requestId }, mustAnswer: [], requestIds: [] }
    }
    case "eof":
      return { message: { _tag: "Eof" }, mustAnswer: [], requestIds: [] }
    case "ping":
      return { message: { _tag: "Ping" }, mustAnswer: [], requestIds: [] }
    case "json":
      return { message: spec.value, mustAnswer: [], requestIds: [] }
    case "tagged": {
      const rest = typeof spec.rest === "object" && spec.rest !== null && !Array.isArray(spec.rest) ? spec.rest : { rest: spec.rest }
      return { message: copyWith(rest, "_tag", spec.tag), mustAnswer: [], requestIds: [] }
    }
    case "text":
      return spec.text
    case "deepText": {
      const text = deepText(spec.deep)
      return spec.inPayload
        ? withDeepText({ _tag: "Request", id: fresh(), tag: "ChatCompletion", payload: DEEP_MARK, headers: [] }, text)
        : text
    }
    case "binary":
      return spec.bytes
    case "array": {
      const messages: Array<unknown> = []
      const requestIds: Array<string> = []
      for (const item of spec.items) {
        const realized = realizeRpc(item, state)
        // Texts and bytes cannot be items of a JSON array; their JSON string stands in.
        if (typeof realized === "string") messages.push(realized)
        else if (realized instanceof Uint8Array) messages.push([...realized])
        else {
          messages.push(realized.message)
          requestIds.push(...realized.requestIds)
        }
      }
      // One bad message refuses the whole frame, so nothing in an array must be answered.
      return { message: messages, mustAnswer: [], requestIds }
    }
  }
}

interface RpcMessage {
  readonly _tag: string
  readonly requestId?: string
}

const isRpcMessage = (json: unknown): json is RpcMessage =>
  typeof json === "object" && json !== null && "_tag" in json && typeof json._tag === "string"

/** Whether a cause (encoded) contains a Die. */
const hasDie = (cause: unknown, depth = 0): boolean => {
  if (typeof cause !== "object" || cause === null || depth > 50) return false
  const node = cause as { readonly _tag?: unknown; readonly left?: unknown; readonly right?: unknown }
  return node._tag === "Die" || hasDie(node.left, depth + 1) || hasDie(node.right, depth + 1)
}

const isDieExit = (json: unknown): boolean =>
  isRpcMessage(json) && json._tag === "Exit" &&
  hasDie((json as { readonly exit?: { readonly cause?: unknown } }).exit?.cause)

// ---------------------------------------------------------------------------

describe("fuzz", () => {
  layer(
    TestServer.layer({ env: { OFFLINE_WORD_DELAY_MS: "0", WS_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES) } }),
    { excludeTestServices: true }
  )("against the server with the offline model", (it) => {
    it.effect("/ws: every generated frame gets exactly one final answer; the connection and the server stay up", () =>
      Effect.gen(function*() {
        const { http, ws } = yield* TestServer.urls
        const result = yield* Effect.promise(async () => {
          const prototypes = snapshotPrototypes()
          const connection = sharedConnection(ws)
          const ledger = new WsLedger()
          let counter = 0
          const nextId = () => `f${++counter}`
          let lastSocket: RawSocket | undefined
          let totalFrames = 0

          const runBatch = async (specs: ReadonlyArray<WsSpec>) => {
            const socket = await connection.get()
            if (socket !== lastSocket) {
              lastSocket = socket
              ledger.reset()
            }
            ledger.absorb(socket)
            const frames = realizeBatch(specs, nextId)
            const nullBefore = ledger.nullFrames
            let expectedNull = 0
            for (const frame of frames) {
              if (frame.expectedId === null) expectedNull++
              else ledger.expected.set(frame.expectedId, (ledger.expected.get(frame.expectedId) ?? 0) + 1)
              socket.send(frame.data)
            }
            totalFrames += frames.length
            const pingId = nextId()
            ledger.expected.set(pingId, 1)
            socket.send(JSON.stringify({ type: "ping", request_id: pingId }))
            const withId = frames.filter((frame) => frame.expectedId !== null)
            const unanswered = () =>
              withId.filter((frame) => frame.expectedId !== null && ledger.finals(frame.expectedId) < (ledger.expected.get(frame.expectedId) ?? 1))
            const describe = () => {
              ledger.absorb(socket)
              const missing = unanswered()
              return [
                `${missing.length} frame(s) without a final answer`,
                ...missing.slice(0, 3).map((frame) =>
                  `${describeFrame(frame)} got ${show(ledger.byId.get(frame.expectedId ?? "") ?? [], 600)}`
                ),
                `null-id errors: ${ledger.nullFrames - nullBefore} of ${expectedNull}`,
                `pong: ${ledger.finals(pingId)}`
              ].join("\n")
            }
            await socket.until(() => {
              ledger.absorb(socket)
              return ledger.finals(pingId) >= 1 && unanswered().length === 0 && ledger.nullFrames - nullBefore >= expectedNull
            }, BATCH_DEADLINE_MS, describe)
            ledger.absorb(socket)

            const problems: Array<string> = []
            if (ledger.stray.length > 0) problems.push(`unexpected frames: ${ledger.stray.splice(0).join(" | ")}`)
            const nullCount = ledger.nullFrames - nullBefore
            if (nullCount !== expectedNull) {
              const nullFrames = frames.filter((frame) => frame.expectedId === null).map(describeFrame)
              problems.push(`${nullCount} error frames without a request_id for ${expectedNull} frames without a usable one: ${nullFrames.join("; ")}`)
            }
            for (const frame of withId) {
              const id = frame.expectedId ?? ""
              const got = ledger.byId.get(id) ?? []
              const count = ledger.expected.get(id) ?? 1
              const finals = got.filter(isFinalFrame)
              if (finals.length !== count) {
                problems.push(`${describeFrame(frame)}: expected ${count} final frame(s), got ${show(got, 800)}`)
                continue
              }
              if (count === 1 && got.at(-1) !== finals[0]) {
                problems.push(`${describeFrame(frame)}: frames after its final frame: ${show(got, 800)}`)
              }
              const final = finals[0]
              if (frame.successFinal !== undefined && final !== undefined && final.type !== frame.successFinal) {
                const allowed = final.type === "error" &&
                  (final.data?.category === "overloaded" || final.data?.category === "cancelled")
                if (!allowed) problems.push(`${describeFrame(frame)}: a valid request answered with ${show(final, 800)}`)
              }
            }
            const unknownIds = [...ledger.byId.keys()].filter((id) => !ledger.expected.has(id))
            if (unknownIds.length > 0) problems.push(`answers for request_ids never sent: ${show(unknownIds)}`)
            const changes = prototypeChanges(prototypes)
            if (changes.length > 0) problems.push(`prototypes changed: ${changes.join(", ")}`)
            if (!socket.open) problems.push(`the connection closed: ${show(socket.closed)}`)
            if (problems.length > 0) throw new Error(problems.join("\n"))
          }

          try {
            const stats = await check(
              "/ws",
              fc.asyncProperty(fc.array(wsSpec, { minLength: 1, maxLength: 20 }), runBatch),
              200
            )
            // Late frames: after a last ping round-trip, still exactly one final frame per request.
            const socket = await connection.get()
            const lastPing = nextId()
            ledger.expected.set(lastPing, 1)
            socket.send(JSON.stringify({ type: "ping", request_id: lastPing }))
            await socket.until(() => {
              ledger.absorb(socket)
              return ledger.finals(lastPing) === 1
            }, BATCH_DEADLINE_MS, () => "the last ping")
            const extra = [...ledger.expected].filter(([id, count]) => ledger.finals(id) > count)
            const health = await fetch(`${http}/health`).then((response) => response.status)
            const answers = histogram([...ledger.byId.values()].flatMap((frames) =>
              frames.filter(isFinalFrame).map((frame) => frame.type === "error" ? `error:${frame.data?.code ?? "?"}` : frame.type)
            ))
            return { ...stats, totalFrames, extra, health, answers, changes: prototypeChanges(prototypes) }
          } finally {
            connection.close()
          }
        })
        console.log(`/ws: ${result.runs} runs, ${result.totalFrames} frames in ${result.elapsed} ms; answers: ${result.answers}`)
        expect(result.extra).toEqual([])
        expect(result.health).toBe(200)
        expect(result.changes).toEqual([])
        expect(result.runs).toBeGreaterThan(20)
      }), 60_000)

    it.effect("/rpc: no generated frame closes the connection; every well-formed request gets one Exit; a Ping is answered", () =>
      Effect.gen(function*() {
        const { http, port } = yield* TestServer.urls
        const result = yield* Effect.promise(async () => {
          const prototypes = snapshotPrototypes()
          // RpcServer sends a stream's next chunk once the client acknowledged the last one.
          const connection = sharedConnection(`ws://127.0.0.1:${port}/rpc`, (socket, message) => {
            const json = message.json
            if (isRpcMessage(json) && json._tag === "Chunk" && typeof json.requestId === "string") {
              socket.send(JSON.stringify({ _tag: "Ack", requestId: json.requestId }))
            }
          })
          const state: RpcState = { nextId: 1, recent: [] }
          let totalFrames = 0
          /** Exits by canonical request id, per socket. */
          const exits = new Map<string, number>()
          let seen = 0
          let lastSocket: RawSocket | undefined
          const allReceived: Array<unknown> = []
          /** Exits whose cause is a defect: the server's bug, never the client's (a bad request fails with a typed error). */
          const dies: Array<string> = []
          const absorb = (socket: RawSocket) => {
            for (; seen < socket.received.length; seen++) {
              const json = socket.received[seen]?.json
              allReceived.push(json)
              if (isDieExit(json)) dies.push(socket.received[seen]?.text ?? "")
              if (isRpcMessage(json) && json._tag === "Exit" && typeof json.requestId === "string") {
                exits.set(json.requestId, (exits.get(json.requestId) ?? 0) + 1)
              }
            }
          }

          const runBatch = async (specs: ReadonlyArray<RpcSpec>) => {
            const socket = await connection.get()
            if (socket !== lastSocket) {
              lastSocket = socket
              seen = 0
              exits.clear()
            }
            const sent: Array<RpcSent> = []
            for (const spec of specs) {
              const realized = realizeRpc(spec, state)
              const data = typeof realized === "string" || realized instanceof Uint8Array
                ? realized
                : JSON.stringify(realized.message) ?? "null"
              sent.push({ spec, data, realized: typeof realized === "string" || realized instanceof Uint8Array ? undefined : realized })
            }
            // Exits already counted for these ids (a generated id may have used one before).
            absorb(socket)
            const before = new Map<string, number>()
            const uses = new Map<string, number>()
            for (const frame of sent) {
              for (const id of frame.realized?.requestIds ?? []) {
                uses.set(id, (uses.get(id) ?? 0) + 1)
                before.set(id, exits.get(id) ?? 0)
              }
            }
            const diesBefore = dies.length
            for (const frame of sent) socket.send(frame.data)
            totalFrames += sent.length
            const pingId = String(state.nextId++)
            before.set(pingId, exits.get(pingId) ?? 0)
            socket.send(JSON.stringify({ _tag: "Request", id: pingId, tag: "Ping", payload: {}, headers: [] }))
            const mustAnswer = sent.flatMap((frame) => (frame.realized?.mustAnswer ?? []).map((id) => ({ id, frame })))
            const answers = (id: string) => (exits.get(id) ?? 0) - (before.get(id) ?? 0)
            const unanswered = () => mustAnswer.filter(({ id }) => answers(id) === 0)
            const describeSent = (frame: RpcSent) =>
              typeof frame.data === "string" ? show(frame.data, 600) : `binary ${frame.data.byteLength} bytes`
            await socket.until(() => {
              absorb(socket)
              return answers(pingId) >= 1 && unanswered().length === 0
            }, BATCH_DEADLINE_MS, () => {
              const missing = unanswered()
              return [
                `the Ping ${pingId} ${answers(pingId) >= 1 ? "was" : "was not"} answered`,
                `${missing.length} request(s) without an Exit: ${missing.slice(0, 3).map(({ frame, id }) => `${id}: ${describeSent(frame)}`).join("; ")}`,
                `the batch: ${sent.map(describeSent).map((text) => clip(text, 300)).join(" | ")}`,
                `last messages: ${show(socket.received.slice(-5).map((m) => clip(m.text, 300)), 1_500)}`
              ].join("\n")
            })
            absorb(socket)
            const problems: Array<string> = []
            for (const { frame, id } of mustAnswer) {
              // An id the batch used twice may be answered twice (once per request).
              const count = answers(id)
              const allowed = uses.get(id) ?? 1
              if (count < 1 || count > allowed) problems.push(`request ${id} got ${count} Exits: ${describeSent(frame)}`)
            }
            if (dies.length > diesBefore) {
              problems.push(
                `${dies.length - diesBefore} Exit(s) with a defect (Die): ${dies.slice(diesBefore, diesBefore + 2).map((text) => clip(text, 700)).join(" | ")}`,
                `the batch: ${sent.map(describeSent).map((text) => clip(text, 300)).join(" | ")}`
              )
            }
            const changes = prototypeChanges(prototypes)
            if (changes.length > 0) problems.push(`prototypes changed: ${changes.join(", ")}`)
            if (!socket.open) problems.push(`the connection closed: ${show(socket.closed)}`)
            if (problems.length > 0) throw new Error(problems.join("\n"))
          }

          try {
            const stats = await check("/rpc", fc.asyncProperty(fc.array(rpcSpec, { minLength: 1, maxLength: 16 }), runBatch), 200)
            const health = await fetch(`${http}/health`).then((response) => response.status)
            const answers = histogram(allReceived.map((json) => {
              if (!isRpcMessage(json)) return "?"
              if (json._tag !== "Exit") return json._tag
              const exit = (json as { readonly exit?: { readonly _tag?: string; readonly cause?: { readonly _tag?: string; readonly error?: { readonly _tag?: string; readonly code?: string } } } }).exit
              return exit?._tag === "Success" ? "Exit:Success" : `Exit:${exit?.cause?._tag ?? "?"}:${exit?.cause?.error?._tag ?? ""}:${exit?.cause?.error?.code ?? ""}`
            }))
            return { ...stats, totalFrames, health, answers, changes: prototypeChanges(prototypes) }
          } finally {
            connection.close()
          }
        })
        console.log(`/rpc: ${result.runs} runs, ${result.totalFrames} frames in ${result.elapsed} ms; answers: ${result.answers}`)
        expect(result.health).toBe(200)
        expect(result.changes).toEqual([])
        expect(result.runs).toBeGreaterThan(20)
      }), 60_000)
  })
})
