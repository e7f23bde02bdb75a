/**
 * GET /usage: the ledger's aggregates as JSON.
 *
 * `from` and `to` are ISO 8601 times (default: the last 24 hours), and
 * `group_by` is a comma-separated list of principal, model, type, status,
 * day and hour. With auth on, a caller sees its own principal's requests;
 * an ADMIN_TOKENS token sees everyone's (and may pass `principal=`).
 */
import { HttpLayerRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Clock, Duration, Effect, Either, Layer, Schema } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { Ledger } from "../ledger/Ledger.js"
import { GROUPS, type Group, type UsageQuery } from "../ledger/Usage.js"
import * as Auth from "./Auth.js"
import * as Mount from "./Mount.js"

export const PATH = "/usage" as const

const DAY_MS = 86_400_000

const IsoTime = Schema.String.pipe(
  Schema.filter((text) => /^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(text) && !Number.isNaN(Date.parse(text)), {
    message: () => "Expected an ISO 8601 time, such as 2026-12-01 or 2026-12-01T09:30:00Z"
  })
)

const Params = Schema.Struct({
  from: Schema.optional(IsoTime),
  to: Schema.optional(IsoTime),
  group_by: Schema.optional(Schema.String),
  principal: Schema.optional(Schema.String)
})
const decodeParams = Schema.decodeUnknownEither(Params, { onExcessProperty: "ignore" })

const badRequest = (message: string) =>
  HttpServerResponse.unsafeJson({ error: "invalid_query", message }, { status: 400 })

const isGroup = (name: string): name is Group => (GROUPS as ReadonlyArray<string>).includes(name)

export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const router = yield* HttpLayerRouter.HttpRouter
  const ledger = yield* Ledger
  const auth = Auth.makePolicy(yield* AppConfig)

  yield* router.add(
    "GET",
    Mount.path(yield* Mount.Mount, PATH),
    Effect.gen(function*() {
      if (!ledger.enabled) {
        return HttpServerResponse.unsafeJson(
          { error: "usage_not_recorded", message: "Usage is not recorded: the server runs with DB_TYPE=none" },
          { status: 404 }
        )
      }
      const request = yield* HttpServerRequest.HttpServerRequest
      const search = new URL(request.url, "http://localhost").searchParams
      const params = decodeParams(Object.fromEntries(search))
      if (Either.isLeft(params)) return badRequest("from and to must be ISO 8601 times")
      const now = yield* Clock.currentTimeMillis
      const to = params.right.to === undefined ? now : Date.parse(params.right.to)
      const from = params.right.from === undefined ? to - DAY_MS : Date.parse(params.right.from)
      if (from >= to) return badRequest("from must be before to")
      const names = (params.right.group_by ?? "").split(",").map((name) => name.trim()).filter((name) => name.length > 0)
      const unknown = names.filter((name) => !isGroup(name))
      if (unknown.length > 0) {
        return badRequest(`Unknown group_by ${unknown.map((name) => JSON.stringify(name.slice(0, 32))).join(", ")}; expected any of ${GROUPS.join(", ")}`)
      }
      const groupBy = [...new Set(names.filter(isGroup))]

      const token = Auth.presentedToken(request)
      const seesEveryone = !auth.required || auth.isAdmin(token)
      const principal = seesEveryone ? params.right.principal : auth.principalOf(token)
      const query: UsageQuery = { from, to, groupBy, principal }
      return yield* ledger.usage(query).pipe(
        // A database that is down or slow gets a 503, not a request that hangs.
        Effect.timeout(Duration.seconds(10)),
        Effect.map((rows) =>
          HttpServerResponse.unsafeJson({
            from: new Date(from).toISOString(),
            to: new Date(to).toISOString(),
            group_by: groupBy,
            principal: principal ?? null,
            rows
          })
        ),
        Effect.catchAll((error) =>
          Effect.logWarning("Could not read usage from the database", error).pipe(
            Effect.as(HttpServerResponse.unsafeJson(
              { error: "database_unavailable", message: "The usage database cannot be read right now; retry shortly" },
              { status: 503, headers: { "retry-after": "5" } }
            ))
          )
        )
      )
    })
  )
}))
