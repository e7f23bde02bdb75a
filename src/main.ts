/**
 * `npm start`: AIBase from the environment (and .env), until SIGINT/SIGTERM.
 */
import { HttpServerError } from "@effect/platform"
import { NodeRuntime } from "@effect/platform-node"
import { Cause, ConfigError, Console, Effect, Layer, Option } from "effect"
import { AppConfig } from "./config/AppConfig.js"
import * as DotEnv from "./config/DotEnv.js"
import * as Logging from "./config/Logging.js"
import { DatabaseError } from "./db/Database.js"
import * as AiBaseServer from "./server/AiBaseServer.js"

const App = AiBaseServer.layer.pipe(
  Layer.provide(Logging.layer),
  Layer.provide(AppConfig.layer),
  Layer.provide(DotEnv.layer())
)

/** Startup failures in one line each: they are the operator's to fix. */
const describe = (error: unknown): string =>
  ConfigError.isConfigError(error)
    ? `Invalid configuration: ${String(error).replace(/^\(|\)$/g, "")}`
    : error instanceof DatabaseError
    ? error.message
    : error instanceof HttpServerError.ServeError
    ? `Could not start the HTTP server: ${String(error.cause)}`
    : String(error)

Layer.launch(App).pipe(
  Effect.tapErrorCause((cause) =>
    Cause.isInterruptedOnly(cause) ? Effect.void : Console.error(
      Option.match(Cause.failureOption(cause), { onNone: () => Cause.pretty(cause), onSome: describe })
    )
  ),
  // Logging.layer installs the logger LOG_FORMAT asks for; runMain must not add its own.
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true })
)
