/**
 * A fake OpenTelemetry collector on loopback: it accepts OTLP/HTTP JSON
 * trace exports (`POST /v1/traces`) and keeps their spans, flattened, with
 * their attributes as plain values, for tests to look at.
 */
import { Effect, Schema, type Scope } from "effect"
import { createServer, type IncomingMessage } from "node:http"
import * as Wait from "./Wait.js"

// The part of OTLP's JSON encoding (opentelemetry-proto, ExportTraceServiceRequest) the tests read.

interface AnyValue {
  readonly stringValue?: string | undefined
  readonly intValue?: number | string | undefined
  readonly doubleValue?: number | undefined
  readonly boolValue?: boolean | undefined
  readonly arrayValue?: { readonly values?: ReadonlyArray<AnyValue> | undefined } | undefined
}

const AnyValue: Schema.Schema<AnyValue> = Schema.Struct({
  stringValue: Schema.optional(Schema.String),
  intValue: Schema.optional(Schema.Union(Schema.Number, Schema.String)),
  doubleValue: Schema.optional(Schema.Number),
  boolValue: Schema.optional(Schema.Boolean),
  arrayValue: Schema.optional(Schema.Struct({
    values: Schema.optional(Schema.Array(Schema.suspend((): Schema.Schema<AnyValue> => AnyValue)))
  }))
})

const KeyValues = Schema.Array(Schema.Struct({ key: Schema.String, value: AnyValue }))

const OtlpSpan = Schema.Struct({
  traceId: Schema.String,
  spanId: Schema.String,
  parentSpanId: Schema.optional(Schema.String),
  name: Schema.String,
  kind: Schema.Number,
  startTimeUnixNano: Schema.String,
  endTimeUnixNano: Schema.String,
  attributes: Schema.optionalWith(KeyValues, { default: () => [] }),
  status: Schema.optional(Schema.Struct({ code: Schema.optional(Schema.Number), message: Schema.optional(Schema.String) }))
})

const ExportTraceServiceRequest = Schema.parseJson(Schema.Struct({
  resourceSpans: Schema.Array(Schema.Struct({
    resource: Schema.optional(Schema.Struct({ attributes: Schema.optionalWith(KeyValues, { default: () => [] }) })),
    scopeSpans: Schema.Array(Schema.Struct({ spans: Schema.optionalWith(Schema.Array(OtlpSpan), { default: () => [] }) }))
  }))
}))

const decodeExport = Schema.decodeUnknownEither(ExportTraceServiceRequest)

/** OTLP's span kinds by number. */
export const SpanKind = { internal: 1, server: 2, client: 3 } as const
/** OTLP's status codes by number. */
export const StatusCode = { unset: 0, ok: 1, error: 2 } as const

export interface CollectedSpan {
  readonly name: string
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId: string | undefined
  readonly kind: number
  /** Epoch nanoseconds. */
  readonly start: bigint
  readonly end: bigint
  readonly attributes: Readonly<Record<string, unknown>>
  readonly status: number
  /** The attributes of the resource that sent it (`service.name`...). */
  readonly resource: Readonly<Record<string, unknown>>
}

export interface Export {
  readonly path: string
  readonly contentType: string | undefined
}

export interface FakeCollector {
  /** The base URL, for OTEL_EXPORTER_OTLP_ENDPOINT. */
  readonly url: string
  readonly spans: () => ReadonlyArray<CollectedSpan>
  /** Every request it got, accepted or not. */
  readonly exports: () => ReadonlyArray<Export>
  /** Bodies it could not read as OTLP JSON (expected: none). */
  readonly rejected: () => ReadonlyArray<string>
  /** Waits (with a deadline) until the spans satisfy `condition`, and gives them. */
  readonly waitForSpans: (
    condition: (spans: ReadonlyArray<CollectedSpan>) => boolean,
    message: string
  ) => Effect.Effect<ReadonlyArray<CollectedSpan>, Wait.WaitTimeout>
}

const plain = (value: AnyValue): unknown => {
  if (value.stringValue !== undefined) return value.stringValue
  // int64 is a string in OTLP JSON; some exporters send a number.
  if (value.intValue !== undefined) return Number(value.intValue)
  if (value.doubleValue !== undefined) return value.doubleValue
  if (value.boolValue !== undefined) return value.boolValue
  if (value.arrayValue !== undefined) return (value.arrayValue.values ?? []).map(plain)
  return undefined
}

const record = (pairs: ReadonlyArray<{ readonly key: string; readonly value: AnyValue }>): Record<string, unknown> =>
  Object.fromEntries(pairs.map(({ key, value }) => [key, plain(value)]))

const readBody = (request: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    const parts: Array<Buffer> = []
    request.on("data", (part: Buffer) => parts.push(part))
    request.on("end", () => resolve(Buffer.concat(parts).toString("utf8")))
    request.on("error", reject)
  })

/** The collector on a random loopback port, closed with the scope. */
export const start: Effect.Effect<FakeCollector, never, Scope.Scope> = Effect.acquireRelease(
  Effect.async<{ readonly collector: FakeCollector; readonly close: () => Promise<void> }>((resume) => {
    const spans: Array<CollectedSpan> = []
    const exports: Array<Export> = []
    const rejected: Array<string> = []
    const server = createServer((request, response) => {
      const path = request.url ?? ""
      exports.push({ path, contentType: request.headers["content-type"] })
      readBody(request).then((body) => {
        const decoded = request.method === "POST" && path === "/v1/traces" ? decodeExport(body) : undefined
        if (decoded === undefined || decoded._tag === "Left") {
          rejected.push(body.slice(0, 500))
          response.writeHead(400, { "content-type": "application/json" }).end("{}")
          return
        }
        for (const resourceSpans of decoded.right.resourceSpans) {
          const resource = record(resourceSpans.resource?.attributes ?? [])
          for (const scopeSpans of resourceSpans.scopeSpans) {
            for (const span of scopeSpans.spans) {
              spans.push({
                name: span.name,
                traceId: span.traceId,
                spanId: span.spanId,
                parentSpanId: span.parentSpanId === "" ? undefined : span.parentSpanId,
                kind: span.kind,
                start: BigInt(span.startTimeUnixNano),
                end: BigInt(span.endTimeUnixNano),
                attributes: record(span.attributes),
                status: span.status?.code ?? StatusCode.unset,
                resource
              })
            }
          }
        }
        // An ExportTraceServiceResponse with nothing rejected.
        response.writeHead(200, { "content-type": "application/json" }).end("{}")
      }, () => response.destroy())
    })
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      const collector: FakeCollector = {
        url: `http://127.0.0.1:${port}`,
        spans: () => spans,
        exports: () => exports,
        rejected: () => rejected,
        waitForSpans: (condition, message) =>
          Effect.as(Wait.waitFor(() => condition(spans), { message, timeout: "15 seconds" }), spans)
      }
      resume(Effect.succeed({
        collector,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections()
            server.close(() => done())
          })
      }))
    })
  }),
  ({ close }) => Effect.promise(close)
).pipe(Effect.map(({ collector }) => collector))
