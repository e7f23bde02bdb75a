// npm's `prepare` script. npm runs it after `npm install`/`npm ci` in this
// checkout, and whenever it packs the package from a directory: `npm pack`,
// `npm install --install-links <path>`, and git dependencies (for those npm
// installs the devDependencies first). It builds dist/ with the local
// TypeScript; when that is not installed it must not break the install.
import { spawnSync } from "node:child_process"
import { existsSync, realpathSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const windows = process.platform === "win32"
const tsc = join(root, "node_modules", ".bin", windows ? "tsc.cmd" : "tsc")
const built = existsSync(join(root, "dist", "index.js"))

const say = (message) => console.error(`aibase prepare: ${message}`)

const run = (command, args, env = process.env) => {
  const result = spawnSync(command, args, { cwd: root, stdio: "inherit", env, shell: windows })
  if (result.error !== undefined) throw result.error
  return result.status ?? 1
}

const build = () => {
  const status = run(tsc, ["-p", "tsconfig.build.json"])
  // A real compile error must fail, as `npm run build` would.
  if (status !== 0) say(`the build failed (tsc exited with ${status})`)
  process.exit(status)
}

// Only the TypeScript installed in this checkout: one found further up (in a
// host project) would compile against whatever that project has installed.
if (existsSync(tsc)) build()

// npm's directory packer sets npm_package_resolved to the folder it packs.
const same = (a, b) => {
  try {
    return realpathSync(a) === realpathSync(b)
  } catch {
    return false
  }
}
const packing = process.env.npm_package_resolved !== undefined && same(process.env.npm_package_resolved, root)
const checkout = existsSync(join(root, "src", "index.ts")) && existsSync(join(root, "tsconfig.build.json"))

if (!packing || built || !checkout) {
  say(
    built
      ? "typescript is not installed here (no devDependencies), so the existing dist/ is kept as it is."
      : "typescript is not installed here (no devDependencies), so dist/ was not built; " +
        "run `npm install` in this folder to build it."
  )
  process.exit(0)
}

// Packed from a fresh checkout (`npm install --install-links <path>` on a
// clone without node_modules): the tarball would hold no dist/, so install
// the devDependencies here, as npm does for git dependencies. That install
// runs this script again as the root project's `prepare`, which builds.
// Only npm settings about where and how to fetch pass to it; the outer
// command's own (global, omit, install-links, ...) would change what it does.
const fetchSettings = new Set([
  "cache", "registry", "userconfig", "globalconfig", "cafile", "ca", "proxy", "https_proxy", "noproxy",
  "strict_ssl", "prefer_offline", "prefer_online", "offline", "fetch_retries", "fetch_timeout", "loglevel"
])
const env = Object.fromEntries(
  Object.entries(process.env).filter(([key]) => {
    const lower = key.toLowerCase()
    if (lower.startsWith("npm_config_")) return fetchSettings.has(lower.slice("npm_config_".length))
    return !lower.startsWith("npm_package_") && !lower.startsWith("npm_lifecycle_") && !lower.startsWith("_pacote_")
  })
)
say("packing a checkout without node_modules: installing its devDependencies to build dist/")
const npmCli = process.env.npm_execpath
const installArgs = ["install", "--include=dev", "--no-save", "--no-audit", "--no-fund"]
const status = npmCli !== undefined && npmCli.endsWith(".js")
  ? run(process.execPath, [npmCli, ...installArgs], env)
  : run("npm", installArgs, env)
if (status !== 0 || !existsSync(tsc)) {
  say("installing the devDependencies or building failed, so the package would have no dist/: " +
    "run `npm install` in this folder, or install from a tarball made by `npm pack`.")
  process.exit(1)
}
if (!existsSync(join(root, "dist", "index.js"))) build()
