/**
 * The Hub knows every open client connection and every request in flight,
 * on /ws and /rpc alike. It admits connections (up to MAX_CONNECTIONS),
 * admits requests (none once shutdown has begun), and runs the graceful
 * drain: refuse new work, let in-flight requests finish within the grace
 * period, then ask every connection to close.
 */
import { Context, Data, Duration, Effect, Either, type Fiber, FiberId, HashSet, Layer, Option, type Scope } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { UnavailableError } from "../protocol/Errors.js"

export type Transport = "ws" | "rpc"

/** A connection's membership in the Hub. */
export interface Membership {
  readonly id: number
  /**
   * Sets how the connection closes when the server shuts down (after its
   * requests have finished or been stopped). The Hub runs it; by default the
   * connection is left to the server's own teardown.
   */
  readonly onShutdown: (close: Effect.Effect<void>) => void
}

/** Why a connection was not admitted. */
export class ConnectionRefused extends Data.TaggedError("ConnectionRefused")<{
  readonly reason: "shutting_down" | "too_many_connections"
}> {
  override get message() {
    return this.reason === "shutting_down" ? "The server is shutting down" : "The server has too many connections"
  }
}

export interface HubOptions {
  /** Connections held at once (MAX_CONNECTIONS); more are refused. Default 10,000. */
  readonly maxConnections?: number | undefined
}

export interface Stats {
  readonly clients: number
  readonly clientsByTransport: Readonly<Record<Transport, number>>
  readonly inFlight: number
  readonly draining: boolean
}

/**
 * Requests still running when the grace period ends are interrupted by this
 * FiberId, so a transport can tell them apart from cancellations and
 * disconnects and answer with an `unavailable` error.
 */
export const ShutdownFiberId: FiberId.FiberId = FiberId.make(-1001, 0)

/** The error for a request the Hub stopped at shutdown. */
export const stoppedAtShutdown = new UnavailableError({
  code: "shutting_down",
  message: "The server is shutting down and stopped this request; retry on a new connection shortly"
})

/**
 * Whether `interruptors` include `id`, also inside a composite FiberId (an
 * interruption passed on from one fiber to another carries both).
 */
export const interruptedBy = (interruptors: HashSet.HashSet<FiberId.FiberId>, id: FiberId.FiberId): boolean => {
  const wanted = FiberId.ids(id)
  for (const interruptor of interruptors) {
    for (const n of FiberId.ids(interruptor)) if (HashSet.has(wanted, n)) return true
  }
  return false
}

/** Whether an interruption came from the Hub stopping requests at shutdown. */
export const isShutdown = (interruptors: HashSet.HashSet<FiberId.FiberId>): boolean =>
  interruptedBy(interruptors, ShutdownFiberId)

/** A membership taken outside a scope: the caller must release it. */
export interface ManualMembership extends Membership {
  /** Leaves the Hub; only the first call counts. */
  readonly release: () => void
}

export class Hub extends Context.Tag("aibase/Hub")<Hub, {
  /** Admits a connection for the lifetime of the current scope. */
  readonly connect: (transport: Transport) => Effect.Effect<Membership, ConnectionRefused, Scope.Scope>
  /**
   * Admits a connection synchronously, for code that ties the membership to
   * something other than a scope (the upgrade path ties it to the socket).
   */
  readonly unsafeConnect: (transport: Transport) => Either.Either<ManualMembership, ConnectionRefused>
  /**
   * Runs a request, counted as in flight. Fails with `unavailable` once
   * draining has begun; a request still running when the grace period ends
   * is interrupted by `ShutdownFiberId`.
   */
  readonly track: <A, E, R>(request: Effect.Effect<A, E, R>) => Effect.Effect<A, E | UnavailableError, R>
  /**
   * Counts a request's fiber as in flight until it ends (what `track` does,
   * for a fiber already started); false, and nothing counted, once draining
   * has begun: the caller answers `unavailable` and interrupts it.
   */
  readonly unsafeTrack: (fiber: Fiber.RuntimeFiber<unknown, unknown>) => boolean
  readonly stats: Effect.Effect<Stats>
  /** `stats`, synchronously (for /health, which must answer even when the server is busy). */
  readonly unsafeStats: () => Stats
  /**
   * Begins the graceful shutdown: refuses new connections and requests, waits
   * up to `grace` for in-flight requests, stops those still running, then
   * signals every connection to close and waits briefly for them to go.
   */
  readonly drain: (grace: Duration.DurationInput) => Effect.Effect<void>
}>() {
  static readonly make = (options: HubOptions = {}) => Effect.gen(function*() {
    const maxConnections = options.maxConnections ?? 10_000
    const members = new Map<number, { readonly transport: Transport; close: Effect.Effect<void> }>()
    // The fibers running requests. Plain mutable state: it is touched on
    // every request, and JavaScript runs one fiber step at a time.
    const running = new Set<Fiber.RuntimeFiber<unknown, unknown>>()
    let draining = false
    let nextId = 0
    // Callbacks waiting for a count to change (the drain's waits).
    const watchers = new Set<() => void>()
    const changed = () => {
      if (watchers.size > 0) for (const watcher of [...watchers]) watcher()
    }

    const refused = new UnavailableError({
      code: "shutting_down",
      message: "The server is shutting down; retry on a new connection shortly"
    })

    const unsafeConnect = (transport: Transport): Either.Either<ManualMembership, ConnectionRefused> => {
      if (draining) return Either.left(new ConnectionRefused({ reason: "shutting_down" }))
      if (members.size >= maxConnections) return Either.left(new ConnectionRefused({ reason: "too_many_connections" }))
      const member = { transport, close: Effect.void }
      const id = ++nextId
      members.set(id, member)
      return Either.right({
        id,
        onShutdown: (close) => {
          member.close = close
        },
        release: () => {
          if (members.delete(id)) changed()
        }
      })
    }

    const connect = (transport: Transport) =>
      Effect.acquireRelease(
        Effect.suspend(() => unsafeConnect(transport)),
        (membership) => Effect.sync(membership.release)
      )

    // Uninterruptible from counting the fiber until the removal is installed,
    // so an interruption in between cannot leave a dead fiber counted.
    const track = <A, E, R>(request: Effect.Effect<A, E, R>): Effect.Effect<A, E | UnavailableError, R> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.withFiberRuntime<A, E | UnavailableError, R>((fiber) => {
          if (draining) return Effect.fail(refused)
          running.add(fiber)
          return Effect.ensuring(
            restore(request),
            Effect.sync(() => {
              running.delete(fiber)
              changed()
            })
          )
        })
      )

    const unsafeTrack = (fiber: Fiber.RuntimeFiber<unknown, unknown>): boolean => {
      if (draining) return false
      running.add(fiber)
      fiber.addObserver(() => {
        running.delete(fiber)
        changed()
      })
      return true
    }

    const unsafeStats = (): Stats => {
      const clientsByTransport: Record<Transport, number> = { ws: 0, rpc: 0 }
      for (const member of members.values()) clientsByTransport[member.transport]++
      return { clients: members.size, clientsByTransport, inFlight: running.size, draining }
    }

    /**
     * Waits until `count()` is 0, for at most `limit`, woken by each change
     * (no polling). Finalizers are uninterruptible, hence `interruptible`:
     * the timeout must be able to stop the wait.
     */
    const awaitZero = (count: () => number, limit: Duration.DurationInput) =>
      Effect.async<void>((resume) => {
        if (count() === 0) return resume(Effect.void)
        const watcher = () => {
          if (count() > 0) return
          watchers.delete(watcher)
          resume(Effect.void)
        }
        watchers.add(watcher)
        return Effect.sync(() => watchers.delete(watcher))
      }).pipe(
        Effect.interruptible,
        Effect.timeoutOption(limit),
        Effect.map(Option.isSome)
      )

    const drain = (grace: Duration.DurationInput) =>
      Effect.gen(function*() {
        if (draining) return
        draining = true
        yield* Effect.logInfo("Shutting down").pipe(
          Effect.annotateLogs({ clients: members.size, in_flight: running.size, grace: Duration.format(grace) })
        )
        if (!(yield* awaitZero(() => running.size, grace))) {
          yield* Effect.logWarning("Grace period over; stopping the requests still running").pipe(
            Effect.annotateLogs({ in_flight: running.size })
          )
          for (const fiber of running) fiber.unsafeInterruptAsFork(ShutdownFiberId)
          // Stopping aborts upstream calls and sends error frames; give it a moment.
          yield* awaitZero(() => running.size, Duration.seconds(1))
        }
        yield* Effect.forEach(members.values(), (member) => member.close, { concurrency: "unbounded", discard: true })
        yield* awaitZero(() => members.size, Duration.seconds(2))
      })

    return Hub.of({ connect, unsafeConnect, track, unsafeTrack, stats: Effect.sync(unsafeStats), unsafeStats, drain })
  })

  static readonly layer = (options: HubOptions = {}): Layer.Layer<Hub> => Layer.effect(Hub, Hub.make(options))

  /** MAX_CONNECTIONS, from AppConfig (the standalone server's assembly). */
  static readonly layerFromAppConfig: Layer.Layer<Hub, never, AppConfig> = Layer.unwrapEffect(
    Effect.map(AppConfig, (config) => Hub.layer({ maxConnections: config.limits.maxConnections }))
  )
}
