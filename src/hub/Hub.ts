/**
 * The Hub knows every open client connection and every request in flight,
 * on /ws and /rpc alike. It admits connections (up to MAX_CONNECTIONS),
 * admits requests (none once shutdown has begun), and runs the graceful
 * drain: refuse new work, let in-flight requests finish within the grace
 * period, then ask every connection to close.
 */
import { Context, Data, Deferred, Duration, Effect, Layer, Ref, Scope, Stream, SubscriptionRef } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { UnavailableError } from "../protocol/Errors.js"

export type Transport = "ws" | "rpc"

/** A connection's membership in the Hub. */
export interface Membership {
  readonly id: number
  /** Completes when the server wants this connection to wind down and close. */
  readonly shutdown: Deferred.Deferred<void>
}

/** Why a connection was not admitted. */
export class ConnectionRefused extends Data.TaggedError("ConnectionRefused")<{
  readonly reason: "shutting_down" | "too_many_connections"
}> {
  override get message() {
    return this.reason === "shutting_down" ? "The server is shutting down" : "The server has too many connections"
  }
}

export interface Stats {
  readonly clients: number
  readonly clientsByTransport: Readonly<Record<Transport, number>>
  readonly inFlight: number
  readonly draining: boolean
}

export class Hub extends Context.Tag("aibase/Hub")<Hub, {
  /** Admits a connection for the lifetime of the current scope. */
  readonly connect: (transport: Transport) => Effect.Effect<Membership, ConnectionRefused, Scope.Scope>
  /**
   * Runs a request, counted as in flight. Fails with `unavailable` when
   * draining has begun, and stops it (failing the same way) if it still runs
   * when the grace period ends.
   */
  readonly track: <A, E, R>(request: Effect.Effect<A, E, R>) => Effect.Effect<A, E | UnavailableError, R>
  readonly stats: Effect.Effect<Stats>
  readonly isDraining: Effect.Effect<boolean>
  /**
   * Begins the graceful shutdown: refuses new connections and requests, waits
   * up to `grace` for in-flight requests, stops those still running, then
   * signals every connection to close and waits briefly for them to go.
   */
  readonly drain: (grace: Duration.DurationInput) => Effect.Effect<void>
}>() {
  static readonly make = Effect.gen(function*() {
    const config = yield* AppConfig
    const maxConnections = config.limits.maxConnections
    const draining = yield* Ref.make(false)
    const inFlight = yield* SubscriptionRef.make(0)
    const members = new Map<number, { readonly transport: Transport; readonly membership: Membership }>()
    const clientCount = yield* SubscriptionRef.make(0)
    /** Completes when the grace period is over: requests still running are stopped. */
    const graceOver = yield* Deferred.make<void>()
    let nextId = 0

    const refused = new UnavailableError({
      code: "shutting_down",
      message: "The server is shutting down; retry on a new connection shortly"
    })
    const stopped = new UnavailableError({
      code: "shutting_down",
      message: "The server is shutting down and stopped this request; retry on a new connection shortly"
    })
    const stopWhenGraceIsOver = Deferred.await(graceOver).pipe(Effect.zipRight(Effect.fail(stopped)))

    const connect = (transport: Transport) =>
      Effect.acquireRelease(
        Effect.gen(function*() {
          if (yield* Ref.get(draining)) return yield* Effect.fail(new ConnectionRefused({ reason: "shutting_down" }))
          if (members.size >= maxConnections) return yield* Effect.fail(new ConnectionRefused({ reason: "too_many_connections" }))
          const membership: Membership = { id: ++nextId, shutdown: yield* Deferred.make<void>() }
          members.set(membership.id, { transport, membership })
          yield* SubscriptionRef.set(clientCount, members.size)
          return membership
        }),
        (membership) =>
          Effect.suspend(() => {
            members.delete(membership.id)
            return SubscriptionRef.set(clientCount, members.size)
          })
      )

    const track = <A, E, R>(request: Effect.Effect<A, E, R>): Effect.Effect<A, E | UnavailableError, R> =>
      Effect.acquireUseRelease(
        Ref.get(draining).pipe(
          Effect.filterOrFail((isDraining) => !isDraining, () => refused),
          Effect.zipRight(SubscriptionRef.update(inFlight, (n) => n + 1))
        ),
        () => Effect.raceFirst(request, stopWhenGraceIsOver),
        () => SubscriptionRef.update(inFlight, (n) => n - 1)
      )

    const stats = Effect.gen(function*() {
      const clientsByTransport: Record<Transport, number> = { ws: 0, rpc: 0 }
      for (const member of members.values()) clientsByTransport[member.transport]++
      return {
        clients: members.size,
        clientsByTransport,
        inFlight: yield* SubscriptionRef.get(inFlight),
        draining: yield* Ref.get(draining)
      }
    })

    /** Waits until `ref` reaches 0, for at most `limit` (finalizers are uninterruptible, hence the mask). */
    const awaitZero = (ref: SubscriptionRef.SubscriptionRef<number>, limit: Duration.DurationInput) =>
      ref.changes.pipe(
        Stream.takeUntil((n) => n <= 0),
        Stream.runDrain,
        Effect.interruptible,
        Effect.timeoutOption(limit)
      )

    const drain = (grace: Duration.DurationInput) =>
      Effect.gen(function*() {
        if (yield* Ref.getAndSet(draining, true)) return
        const pending = yield* SubscriptionRef.get(inFlight)
        yield* Effect.logInfo("Shutting down").pipe(
          Effect.annotateLogs({ clients: members.size, in_flight: pending, grace: Duration.format(grace) })
        )
        const finished = yield* awaitZero(inFlight, grace)
        if (finished._tag === "None") {
          yield* Effect.logWarning("Grace period over; stopping the requests still running").pipe(
            Effect.annotateLogs({ in_flight: yield* SubscriptionRef.get(inFlight) })
          )
          yield* Deferred.succeed(graceOver, undefined)
          // Stopping aborts upstream calls and queues error frames; give it a moment.
          yield* awaitZero(inFlight, Duration.seconds(1))
        }
        for (const { membership } of members.values()) {
          yield* Deferred.succeed(membership.shutdown, undefined)
        }
        yield* awaitZero(clientCount, Duration.seconds(2))
      })

    return Hub.of({ connect, track, stats, isDraining: Ref.get(draining), drain })
  })

  static readonly layer: Layer.Layer<Hub, never, AppConfig> = Layer.effect(Hub, Hub.make)
}
