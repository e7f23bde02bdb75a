/**
 * The offline model's failures on request: a user message (or an embedding
 * input) whose text is exactly `offline:fail:<category>` fails the call with
 * that category's error, which gives tests of error frames a deterministic
 * failure without a real upstream.
 */
import { Effect } from "effect"
import {
  type AiBaseError,
  AuthenticationError,
  CancelledError,
  type ErrorCategory,
  InternalError,
  NotFoundError,
  OverloadedError,
  PermissionError,
  RateLimitError,
  TimeoutError,
  UnavailableError,
  UpstreamError,
  ValidationError
} from "../../protocol/Errors.js"

const failures: Record<ErrorCategory, (fields: { message: string; code: string }) => AiBaseError> = {
  validation: (fields) => new ValidationError(fields),
  authentication: (fields) => new AuthenticationError(fields),
  permission: (fields) => new PermissionError(fields),
  not_found: (fields) => new NotFoundError(fields),
  rate_limit: (fields) => new RateLimitError(fields),
  timeout: (fields) => new TimeoutError(fields),
  upstream: (fields) => new UpstreamError(fields),
  cancelled: (fields) => new CancelledError(fields),
  overloaded: (fields) => new OverloadedError(fields),
  unavailable: (fields) => new UnavailableError(fields),
  internal: (fields) => new InternalError(fields)
}

const isCategory = (name: string): name is ErrorCategory => Object.hasOwn(failures, name)

/** The error the first text asks for, if any; unknown categories are ordinary text. */
export const requestedFailure = (texts: ReadonlyArray<string>): AiBaseError | undefined => {
  for (const text of texts) {
    const category = /^offline:fail:([a-z_]+)$/.exec(text)?.[1]
    if (category !== undefined && isCategory(category)) {
      return failures[category]({
        message: `The offline model failed on request (${text}).`,
        code: `offline_${category}`
      })
    }
  }
  return undefined
}

/** Fails with the error one of the texts asks for, else succeeds. */
export const failIfRequested = (texts: ReadonlyArray<string>): Effect.Effect<void, AiBaseError> => {
  const failure = requestedFailure(texts)
  return failure === undefined ? Effect.void : Effect.fail(failure)
}
