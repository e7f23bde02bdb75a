/**
 * Where AIBase's routes are mounted in the host's router: a path prefix,
 * empty at the root. Every route, the upgrade handler and /info read it,
 * so a prefixed mount serves and advertises the same paths.
 */
import { Context, Layer } from "effect"

export interface MountShape {
  /** `""`, or a path like `/ai` (no trailing slash). */
  readonly prefix: string
}

export class Mount extends Context.Reference<Mount>()("aibase/Mount", {
  defaultValue: (): MountShape => ({ prefix: "" })
}) {
  /** Mounts under `prefix` (`"/ai"`, `"ai/"` and `"/ai/"` are the same; `""` or `"/"` is the root). */
  static readonly layer = (prefix: string): Layer.Layer<never> =>
    Layer.succeed(Mount, { prefix: normalize(prefix) })
}

const normalize = (prefix: string): string => {
  const trimmed = prefix.replace(/^\/+|\/+$/g, "")
  return trimmed === "" ? "" : `/${trimmed}`
}

/** An absolute path, as routers take them. */
export type Path = `/${string}`

/** A route's path under the mount. */
export const path = (mount: MountShape, route: Path): Path => mount.prefix === "" ? route : `/${mount.prefix.slice(1)}${route}`
