/**
 * Background writes to the database that never make the caller wait: items
 * go into a bounded in-memory buffer, and a writer fiber inserts what has
 * gathered in batches, retries with backoff while the database is
 * unreachable, and flushes the rest when its scope closes. When the buffer
 * is full, items are dropped, counted and reported in a warning (at most
 * one a second). The ledger's rows and the frames of resumable streams are
 * written this way.
 */
import type { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Duration, Effect, Fiber, Schedule, type Scope } from "effect"

export interface Options<A> {
  /** What is written, for the logs ("request ledger"). */
  readonly name: string
  /** The client; may wait (a database not reachable at startup). */
  readonly client: Effect.Effect<SqlClient.SqlClient>
  /** Writes one batch (idempotently: a retried batch may have been committed already). */
  readonly write: (sql: SqlClient.SqlClient, batch: ReadonlyArray<A>) => Effect.Effect<unknown, SqlError>
  readonly bufferSize: number
  /** Items per write. Default 500. */
  readonly batchSize?: number | undefined
  /**
   * How long the writer lets items gather after the first arrives. A write
   * costs about the same for one item as for fifty. Default 250 ms.
   */
  readonly linger?: Duration.DurationInput | undefined
  /** How long closing waits for the last items to be written. Default 5 seconds. */
  readonly flushTimeout?: Duration.DurationInput | undefined
}

export interface Stats {
  /** Items waiting to be written. */
  readonly buffered: number
  readonly written: number
  /** Items lost because the buffer was full. */
  readonly dropped: number
}

export interface BatchWriter<A> {
  /** Queues an item; never blocks. `urgent` writes it without letting others gather first. */
  readonly offer: (item: A, urgent?: boolean) => void
  /** Writes everything buffered now. */
  readonly flush: Effect.Effect<void, SqlError>
  readonly stats: () => Stats
}

/** Retries of a failed write: quick at first, then every 5 seconds, for as long as it takes. */
const retrying = Schedule.exponential(Duration.millis(100)).pipe(Schedule.union(Schedule.spaced(Duration.seconds(5))))

export const make = <A>(options: Options<A>): Effect.Effect<BatchWriter<A>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { client, name, bufferSize } = options
    const batchSize = options.batchSize ?? 500
    const linger = options.linger ?? Duration.millis(250)
    const flushTimeout = options.flushTimeout ?? Duration.seconds(5)
    const buffer: Array<A> = []
    let written = 0
    let dropped = 0
    let droppedUnreported = 0
    const wake = yield* Effect.makeLatch(false)
    const batchFull = yield* Effect.makeLatch(false)
    const overflowed = yield* Effect.makeLatch(false)

    const offer = (item: A, urgent = false): void => {
      if (buffer.length >= bufferSize) {
        dropped++
        droppedUnreported++
        overflowed.unsafeOpen()
      } else {
        buffer.push(item)
        if (urgent || buffer.length >= batchSize) batchFull.unsafeOpen()
      }
      wake.unsafeOpen()
    }

    /** One write at a time: the writer and a `flush` must not write (and remove) the same items twice. */
    const lock = yield* Effect.makeSemaphore(1)

    /** Writes the buffer's first items in one batch; they leave the buffer once written. */
    const writeBatch = (sql: SqlClient.SqlClient) =>
      lock.withPermits(1)(Effect.suspend(() => {
        const batch = buffer.slice(0, batchSize)
        if (batch.length === 0) return Effect.void
        return Effect.map(options.write(sql, batch), () => {
          buffer.splice(0, batch.length)
          written += batch.length
        })
      }))

    const flushWith = (sql: SqlClient.SqlClient) =>
      Effect.whileLoop({ while: () => buffer.length > 0, body: () => writeBatch(sql), step: () => {} })

    const reportDropped = Effect.suspend(() => {
      if (droppedUnreported === 0) return Effect.void
      const count = droppedUnreported
      droppedUnreported = 0
      return Effect.logWarning(`The ${name}'s buffer is full: items were not stored`).pipe(
        Effect.annotateLogs({ dropped: count, dropped_total: dropped, buffer_size: bufferSize })
      )
    })

    let failing = false
    const writer = Effect.gen(function*() {
      while (true) {
        yield* wake.await
        yield* Effect.raceFirst(Effect.sleep(linger), batchFull.await)
        yield* wake.close
        yield* batchFull.close
        // Waits here while a database that was not required at startup is still unreachable.
        const sql = yield* client
        yield* flushWith(sql).pipe(
          Effect.tapError((error) => {
            if (failing) return Effect.void
            failing = true
            return Effect.logWarning(`Could not write the ${name}; retrying in the background`, error.message).pipe(
              Effect.annotateLogs({ buffered: buffer.length })
            )
          }),
          Effect.retry(retrying),
          Effect.zipRight(Effect.suspend(() => {
            if (!failing) return Effect.void
            failing = false
            return Effect.logInfo(`The ${name} is being written again`).pipe(Effect.annotateLogs({ written }))
          }))
        )
      }
    })

    // Drops are reported on their own fiber (the writer may be waiting for the
    // database), at most one warning a second.
    const reporter = Effect.forever(
      overflowed.await.pipe(
        Effect.zipRight(overflowed.close),
        Effect.zipRight(reportDropped),
        Effect.zipRight(Effect.sleep(Duration.seconds(1)))
      )
    )

    const fiber = yield* Effect.forkDaemon(Effect.all([writer, reporter], { concurrency: 2, discard: true }))
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        // Not awaited: a write in progress may be one the database never answers.
        yield* Fiber.interruptFork(fiber)
        yield* reportDropped
        if (buffer.length === 0) return
        // Finalizers are uninterruptible, and a database call may not be interruptible either:
        // disconnected, the timeout returns whether or not the write ever does.
        const flushed = yield* client.pipe(
          Effect.flatMap(flushWith),
          Effect.disconnect,
          Effect.interruptible,
          Effect.timeoutOption(flushTimeout),
          Effect.either
        )
        if (buffer.length > 0) {
          yield* Effect.logError(`Shutting down with ${name} items not written`).pipe(
            Effect.annotateLogs({ lost: buffer.length, reason: flushed._tag === "Left" ? flushed.left.message : "timed out" })
          )
        }
      })
    )

    return {
      offer,
      flush: Effect.flatMap(client, flushWith),
      stats: () => ({ buffered: buffer.length, written, dropped })
    }
  })
