/**
 * Principals: who a request is attributed to, without storing who that is.
 * A principal is an HMAC-SHA256 of the caller's token, so the same token
 * maps to the same id on every instance and across restarts, and the id
 * cannot be turned back into the token. With PRINCIPAL_SECRET unset a
 * built-in key is used: fine for long random tokens; set a secret (the same
 * on every instance) when tokens could be guessed.
 */
import { Redacted } from "effect"
import { createHmac } from "node:crypto"

/** The principal of every request when auth is off. */
export const ANONYMOUS = "anonymous"

const BUILT_IN_KEY = "aibase.principal.v1"

/** Maps tokens to principals; `undefined` (no token, or auth off) is `anonymous`. */
export const make = (secret: Redacted.Redacted<string> | undefined) => {
  const key = secret === undefined ? BUILT_IN_KEY : Redacted.value(secret)
  return (token: string | undefined): string =>
    token === undefined
      ? ANONYMOUS
      : `p_${createHmac("sha256", key).update(token).digest("base64url").slice(0, 22)}`
}
