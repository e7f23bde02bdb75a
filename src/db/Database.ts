/**
 * Where AIBase keeps what it records: an `@effect/sql` client chosen by
 * configuration (an embedded SQLite file by default, PostgreSQL when several
 * instances share one database, or nothing), migrated at startup.
 *
 * A host application that already has a database provides its own
 * `SqlClient` with `layerSqlClient`; tests do the same with a throwaway one.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { PgClient } from "@effect/sql-pg"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Reactivity } from "@effect/experimental"
import type * as Migrator from "@effect/sql/Migrator"
import {
  Config,
  type ConfigError,
  Context,
  Data,
  Deferred,
  Duration,
  Effect,
  ExecutionStrategy,
  Exit,
  Layer,
  Option,
  Redacted,
  Schedule,
  Scope,
  type Stream
} from "effect"
import { mkdirSync } from "node:fs"
import { dirname } from "node:path"
import * as Migrations from "./Migrations.js"

export type DatabaseType = "sqlite" | "postgres" | "none"

export type DatabaseOptions =
  | { readonly type: "none" }
  | {
    readonly type: "sqlite"
    /** A file path (its folder is created), or `:memory:`. */
    readonly filename: string
  }
  | {
    readonly type: "postgres"
    /** A `postgres://` URL; when set it wins over the separate fields. */
    readonly url?: Redacted.Redacted | undefined
    readonly host?: string | undefined
    readonly port?: number | undefined
    readonly database?: string | undefined
    readonly username?: string | undefined
    readonly password?: Redacted.Redacted | undefined
    readonly maxConnections?: number | undefined
    /**
     * Whether startup fails when the database cannot be reached (default
     * true). When false, AIBase starts anyway and connects in the background.
     */
    readonly required?: boolean | undefined
  }

/** The database could not be opened or migrated at startup. */
export class DatabaseError extends Data.TaggedError("DatabaseError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** PostgreSQL's LISTEN/NOTIFY: how instances that share a database tell each other things. */
export interface Channels {
  readonly listen: (channel: string) => Stream.Stream<string, SqlError>
  readonly notify: (channel: string, payload: string) => Effect.Effect<void, SqlError>
}

export interface DatabaseShape {
  /** What is configured: sqlite, postgres, none, or the name a host gave its own client. */
  readonly type: string
  /** Where the data is, without credentials (a file path, or host:port/database); null when nothing is stored. */
  readonly location: string | null
  /**
   * The migrated client. While a database that was not required at startup
   * is still unreachable this waits for it; `None` when nothing is stored.
   */
  readonly client: Option.Option<Effect.Effect<SqlClient.SqlClient>>
  /** LISTEN/NOTIFY, when the database is PostgreSQL (waits like `client`). */
  readonly channels: Option.Option<Effect.Effect<Channels>>
}

/** How long a connection attempt may take before it counts as a failure. */
const CONNECT_TIMEOUT = Duration.seconds(5)

/** Retries of a background connection: quick at first, then every 5 seconds. */
const reconnect = Schedule.exponential(Duration.millis(200)).pipe(Schedule.union(Schedule.spaced(Duration.seconds(5))))

/**
 * LISTEN/NOTIFY of a PostgreSQL client. NOTIFY goes through `pg_notify`:
 * PgClient's own `notify` sends `NOTIFY channel, $1`, which PostgreSQL
 * rejects (NOTIFY takes no parameters).
 */
const channelsOf = (client: PgClient.PgClient): Channels => ({
  listen: client.listen,
  notify: (channel, payload) => Effect.asVoid(client`SELECT pg_notify(${channel}, ${payload})`)
})

const describeCause = (cause: unknown): string => {
  if (cause instanceof Error) {
    const inner = "cause" in cause && cause.cause instanceof Error ? `: ${cause.cause.message}` : ""
    return `${cause.message}${inner}`
  }
  return String(cause)
}

/** Runs the migrations on a client, with failures as one readable error. */
const migrate = (client: SqlClient.SqlClient, location: string) =>
  Migrations.run.pipe(
    Effect.provideService(SqlClient.SqlClient, client),
    Effect.mapError((error: Migrator.MigrationError | SqlError) =>
      new DatabaseError({ message: `Could not migrate the database at ${location}: ${describeCause(error)}`, cause: error })
    )
  )

const sqliteClient = (filename: string) =>
  Effect.gen(function*() {
    if (filename !== ":memory:") {
      yield* Effect.try({
        try: () => mkdirSync(dirname(filename), { recursive: true }),
        catch: (cause) => new DatabaseError({ message: `Could not create the folder for ${filename}: ${describeCause(cause)}`, cause })
      })
    }
    const client = yield* SqliteClient.make({ filename }).pipe(
      Effect.catchAllDefect((cause) =>
        new DatabaseError({ message: `Could not open the SQLite database ${filename}: ${describeCause(cause)}`, cause })
      )
    )
    // WAL (set by the client) with synchronous=NORMAL: a commit costs no fsync, and a crash loses at most the last commits.
    yield* client`PRAGMA synchronous = NORMAL`.pipe(Effect.orDie)
    yield* client`PRAGMA busy_timeout = 5000`.pipe(Effect.orDie)
    return client
  }).pipe(Effect.provide(Reactivity.layer))

const pgLocation = (options: Extract<DatabaseOptions, { type: "postgres" }>): string => {
  if (options.url !== undefined) {
    try {
      const url = new URL(Redacted.value(options.url))
      return `${url.hostname}:${url.port || "5432"}${url.pathname}`
    } catch {
      return "(DATABASE_URL)"
    }
  }
  return `${options.host ?? "localhost"}:${options.port ?? 5432}/${options.database ?? ""}`
}

const pgClient = (options: Extract<DatabaseOptions, { type: "postgres" }>, location: string) =>
  PgClient.make({
    ...(options.url !== undefined
      ? { url: options.url }
      : {
        host: options.host,
        port: options.port,
        database: options.database,
        username: options.username,
        password: options.password
      }),
    maxConnections: options.maxConnections ?? 10,
    connectTimeout: CONNECT_TIMEOUT,
    applicationName: "aibase"
  }).pipe(
    Effect.provide(Reactivity.layer),
    Effect.timeoutFail({
      duration: Duration.sum(CONNECT_TIMEOUT, Duration.seconds(1)),
      onTimeout: () => new DatabaseError({ message: `Timed out connecting to PostgreSQL at ${location}` })
    }),
    Effect.catchAll((error) =>
      error instanceof DatabaseError
        ? Effect.fail(error)
        : Effect.fail(
          new DatabaseError({ message: `Could not connect to PostgreSQL at ${location}: ${describeCause(error.cause ?? error)}`, cause: error })
        )
    )
  )

/** Opens a client in its own scope, migrated; the scope is closed if anything fails. */
const openScoped = <C extends SqlClient.SqlClient, E>(
  open: Effect.Effect<C, E, Scope.Scope>,
  location: string,
  scope: Scope.Scope
) =>
  Effect.gen(function*() {
    const inner = yield* Scope.fork(scope, ExecutionStrategy.sequential)
    return yield* open.pipe(
      Effect.tap((client) => migrate(client, location)),
      Scope.extend(inner),
      Effect.onExit((exit) => Exit.isFailure(exit) ? Scope.close(inner, exit) : Effect.void)
    )
  })

export class Database extends Context.Tag("aibase/Database")<Database, DatabaseShape>() {
  /** Opens and migrates the database the options describe, for the lifetime of the scope. */
  static readonly make = (options: DatabaseOptions): Effect.Effect<DatabaseShape, DatabaseError, Scope.Scope> =>
    Effect.gen(function*() {
      const scope = yield* Effect.scope
      switch (options.type) {
        case "none":
          return { type: "none", location: null, client: Option.none(), channels: Option.none() }
        case "sqlite": {
          const client = yield* openScoped(sqliteClient(options.filename), options.filename, scope)
          return {
            type: "sqlite",
            location: options.filename,
            client: Option.some(Effect.succeed(client)),
            channels: Option.none()
          }
        }
        case "postgres": {
          const location = pgLocation(options)
          const open = openScoped(pgClient(options, location), location, scope)
          if (options.required !== false) {
            const client = yield* open
            return {
              type: "postgres",
              location,
              client: Option.some(Effect.succeed(client)),
              channels: Option.some(Effect.succeed(channelsOf(client)))
            }
          }
          // Not required: start now, connect (and migrate) in the background.
          const ready = yield* Deferred.make<PgClient.PgClient>()
          let attempts = 0
          yield* open.pipe(
            // The first failure is news; the retries that follow are not.
            Effect.tapError((error) =>
              ++attempts === 1
                ? Effect.logWarning(`${error.message}; usage is buffered meanwhile, retrying in the background`)
                : Effect.logDebug(error.message)
            ),
            Effect.retry(reconnect),
            Effect.flatMap((client) => Deferred.succeed(ready, client)),
            Effect.zipRight(Effect.logInfo(`Connected to PostgreSQL at ${location}`)),
            Effect.forkIn(scope)
          )
          return {
            type: "postgres",
            location,
            client: Option.some(Deferred.await(ready)),
            channels: Option.some(Effect.map(Deferred.await(ready), channelsOf))
          }
        }
      }
    })

  static readonly layer = (options: DatabaseOptions): Layer.Layer<Database, DatabaseError> =>
    Layer.scoped(Database, Database.make(options))

  /**
   * A database from the host's own `SqlClient` (migrated here), reported as
   * `type` in /info.
   */
  static readonly layerSqlClient = (type = "custom"): Layer.Layer<Database, DatabaseError, SqlClient.SqlClient> =>
    Layer.effect(
      Database,
      Effect.gen(function*() {
        const client = yield* SqlClient.SqlClient
        yield* migrate(client, type)
        // A PostgreSQL client also connects instances (see ResumableStreams).
        const pg = yield* Effect.serviceOption(PgClient.PgClient)
        return { type, location: null, client: Option.some(Effect.succeed(client)), channels: Option.map(pg, (client) => Effect.succeed(channelsOf(client))) }
      })
    )

  /** DB_TYPE, DB_NAME, DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DATABASE_URL, DB_MAX_CONNECTIONS and DB_REQUIRED. */
  static readonly config: Config.Config<DatabaseOptions> = Config.all({
    type: Config.literal("sqlite", "postgres", "none")("DB_TYPE").pipe(Config.withDefault("sqlite" as const)),
    url: Config.option(Config.redacted("DATABASE_URL")),
    host: Config.string("DB_HOST").pipe(Config.withDefault("localhost")),
    port: Config.port("DB_PORT").pipe(Config.withDefault(5432)),
    name: Config.string("DB_NAME").pipe(Config.withDefault("aibase")),
    username: Config.option(Config.nonEmptyString("DB_USER")),
    password: Config.option(Config.redacted("DB_PASSWORD")),
    maxConnections: Config.integer("DB_MAX_CONNECTIONS").pipe(
      Config.validate({ message: "Expected a positive integer", validation: (n) => n > 0 }),
      Config.withDefault(10)
    ),
    required: Config.boolean("DB_REQUIRED").pipe(Config.withDefault(true))
  }).pipe(Config.map((c): DatabaseOptions => {
    switch (c.type) {
      case "none":
        return { type: "none" }
      case "sqlite":
        return { type: "sqlite", filename: sqliteFilename(c.name) }
      case "postgres":
        return {
          type: "postgres",
          url: Option.getOrUndefined(Option.filter(c.url, (url) => Redacted.value(url).length > 0)),
          host: c.host,
          port: c.port,
          database: c.name,
          username: Option.getOrUndefined(c.username),
          password: Option.getOrUndefined(c.password),
          maxConnections: c.maxConnections,
          required: c.required
        }
    }
  }))

  /** `layer` with options read from the environment (see `config`). */
  static readonly layerConfig: Layer.Layer<Database, DatabaseError | ConfigError.ConfigError> = Layer
    .unwrapEffect(Effect.map(Database.config, Database.layer))
}

/**
 * The SQLite file DB_NAME names: a bare name like the default `aibase` is
 * `data/aibase.db`; anything with a folder or an extension is a path as given.
 */
export const sqliteFilename = (name: string): string =>
  name === ":memory:" || name.includes("/") || name.includes("\\") || name.includes(".") ? name : `data/${name}.db`
