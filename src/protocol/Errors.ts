/**
 * The error categories of the AIBase protocol, one tagged error class each.
 *
 * They are Schema classes so that they cross the wire unchanged: the /ws
 * error frame and the /rpc error channel are both derived from them. Every
 * error knows its category, a snake_case code and whether retrying can help.
 */
import { Schema } from "effect"

const fields = {
  /** A sentence a client developer can act on. Never contains secrets. */
  message: Schema.String,
  /** A stable, machine-readable snake_case code. */
  code: Schema.String
}

/** Unreadable JSON, unknown request type, schema failure, upstream 400/422. */
export class ValidationError extends Schema.TaggedError<ValidationError>()("ValidationError", fields) {
  get category() {
    return "validation" as const
  }
  get retryable() {
    return false
  }
}

/** The upstream provider rejected the server's credentials (401). */
export class AuthenticationError extends Schema.TaggedError<AuthenticationError>()("AuthenticationError", fields) {
  get category() {
    return "authentication" as const
  }
  get retryable() {
    return false
  }
}

/** The upstream provider refused the operation (403). */
export class PermissionError extends Schema.TaggedError<PermissionError>()("PermissionError", fields) {
  get category() {
    return "permission" as const
  }
  get retryable() {
    return false
  }
}

/** An unknown model or resource (404). */
export class NotFoundError extends Schema.TaggedError<NotFoundError>()("NotFoundError", fields) {
  get category() {
    return "not_found" as const
  }
  get retryable() {
    return false
  }
}

/** The upstream provider is rate limiting us (429). */
export class RateLimitError extends Schema.TaggedError<RateLimitError>()("RateLimitError", fields) {
  get category() {
    return "rate_limit" as const
  }
  get retryable() {
    return true
  }
}

/** The upstream call (or a tool) took longer than its configured limit. */
export class TimeoutError extends Schema.TaggedError<TimeoutError>()("TimeoutError", fields) {
  get category() {
    return "timeout" as const
  }
  get retryable() {
    return true
  }
}

/** 5xx, connection refused or reset, a stream cut mid-way. */
export class UpstreamError extends Schema.TaggedError<UpstreamError>()("UpstreamError", fields) {
  get category() {
    return "upstream" as const
  }
  get retryable() {
    return true
  }
}

/** The client cancelled the request. */
export class CancelledError extends Schema.TaggedError<CancelledError>()("CancelledError", fields) {
  get category() {
    return "cancelled" as const
  }
  get retryable() {
    return false
  }
}

/** Too many requests in flight on one connection. */
export class OverloadedError extends Schema.TaggedError<OverloadedError>()("OverloadedError", fields) {
  get category() {
    return "overloaded" as const
  }
  get retryable() {
    return true
  }
}

/** The server is shutting down (or at its connection limit). */
export class UnavailableError extends Schema.TaggedError<UnavailableError>()("UnavailableError", fields) {
  get category() {
    return "unavailable" as const
  }
  get retryable() {
    return true
  }
}

/** A bug or an unexpected failure on our side. */
export class InternalError extends Schema.TaggedError<InternalError>()("InternalError", fields) {
  get category() {
    return "internal" as const
  }
  get retryable() {
    return false
  }
}

/** Every error a request can fail with. */
export const AiBaseError = Schema.Union(
  ValidationError,
  AuthenticationError,
  PermissionError,
  NotFoundError,
  RateLimitError,
  TimeoutError,
  UpstreamError,
  CancelledError,
  OverloadedError,
  UnavailableError,
  InternalError
)
export type AiBaseError = typeof AiBaseError.Type

/** The categories, in the order the protocol documents them. */
export const ErrorCategory = Schema.Literal(
  "validation",
  "authentication",
  "permission",
  "not_found",
  "rate_limit",
  "timeout",
  "upstream",
  "cancelled",
  "overloaded",
  "unavailable",
  "internal"
)
export type ErrorCategory = typeof ErrorCategory.Type

export const isAiBaseError: (u: unknown) => u is AiBaseError = Schema.is(AiBaseError)
