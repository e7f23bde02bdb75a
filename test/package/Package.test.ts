/**
 * The package as a host application gets it: `npm pack` of this repository,
 * installed into a new project next to the exact peer versions we test
 * with. The host must end up with one copy of effect and @effect/* (the
 * peers are not nested under aibase), and a strict host program
 * (host/main.ts) must typecheck against the packed declarations and run.
 *
 * Needs dist/ (`npm test` builds it before the suite). npm installs from its
 * cache; the registry is asked only for what is not cached yet.
 */
import { execFile } from "node:child_process"
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { Schema } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const repoRoot = fileURLToPath(new URL("../..", import.meta.url))
const hostSources = fileURLToPath(new URL("./host", import.meta.url))

const PackageJson = Schema.Struct({
  peerDependencies: Schema.Record({ key: Schema.String, value: Schema.String })
})
const InstalledPackage = Schema.Struct({ version: Schema.String })
// `npm pack --json`: one entry per packed package.
const PackOutput = Schema.parseJson(Schema.Tuple(Schema.Struct({
  filename: Schema.String,
  files: Schema.Array(Schema.Struct({ path: Schema.String }))
})))

const readJson = <A, I>(schema: Schema.Schema<A, I>, path: string): A =>
  Schema.decodeUnknownSync(Schema.parseJson(schema))(readFileSync(path, "utf8"))

/** The version installed in our node_modules: what the suite runs against. */
const installedVersion = (name: string): string =>
  readJson(InstalledPackage, join(repoRoot, "node_modules", name, "package.json")).version

// The npm settings of an outer `npm test` (npm_config_*, npm_package_*, ...)
// would leak into the host's npm; only those about fetching pass.
const fetchSettings = new Set(["cache", "registry", "userconfig", "cafile", "proxy", "https_proxy", "noproxy", "strict_ssl"])
const childEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([key]) => {
    const lower = key.toLowerCase()
    if (lower.startsWith("npm_config_")) return fetchSettings.has(lower.slice("npm_config_".length))
    return !lower.startsWith("npm_package_") && !lower.startsWith("npm_lifecycle_")
  })
)

interface Output {
  readonly stdout: string
  readonly stderr: string
}

/** Runs a command to its end, bounded by `timeoutMs`; fails with its output. */
const run = (command: string, args: ReadonlyArray<string>, cwd: string, timeoutMs: number): Promise<Output> =>
  new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { cwd, env: childEnv, timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error === null) resolve({ stdout, stderr })
        else reject(new Error(`\`${command} ${args.join(" ")}\` in ${cwd} failed: ${error.message}\n${stdout}\n${stderr}`))
      }
    )
  })

const npmQuiet = ["--prefer-offline", "--no-audit", "--no-fund"]

describe("the packed package in a host project", () => {
  let workspace = ""
  let host = ""

  beforeAll(async () => {
    if (!existsSync(join(repoRoot, "dist", "index.js")) || !existsSync(join(repoRoot, "dist", "index.d.ts"))) {
      throw new Error("dist/ is missing: run `npm run build` first (`npm test` does) so that `npm pack` has a build to pack")
    }
    workspace = mkdtempSync(join(tmpdir(), "aibase-package-"))
    host = join(workspace, "host")
    mkdirSync(host)

    // --ignore-scripts: pack the dist/ just built rather than building again
    // in `prepare` while other test files run.
    const packed = await run("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", workspace], repoRoot, 30_000)
    const [pack] = Schema.decodeUnknownSync(PackOutput)(packed.stdout)
    const files = pack.files.map((file) => file.path)
    expect(files).toContain("dist/index.js")
    expect(files).toContain("dist/index.d.ts")

    writeFileSync(
      join(host, "package.json"),
      JSON.stringify({ name: "aibase-host", version: "0.0.0", private: true, type: "module" }, null, 2)
    )
    const peers = Object.keys(readJson(PackageJson, join(repoRoot, "package.json")).peerDependencies)
    const exact = [...peers, "typescript", "@types/node"].map((name) => `${name}@${installedVersion(name)}`)
    // --ignore-scripts: better-sqlite3 (under @effect/sql-sqlite-node) would
    // compile from source for minutes; the host runs with DB_TYPE=none and
    // never loads it.
    await run("npm", ["install", ...npmQuiet, "--ignore-scripts", "--save-exact", join(workspace, pack.filename), ...exact], host, 100_000)
  }, 150_000)

  afterAll(() => {
    if (workspace !== "") rmSync(workspace, { recursive: true, force: true })
  })

  it("has one copy of effect, @effect/platform and @effect/rpc, deduped with the host's", async () => {
    const packages = ["effect", "@effect/platform", "@effect/rpc"]
    // One path per installed copy; npm ls also fails on an unmet peer.
    const { stdout } = await run("npm", ["ls", ...packages, "--all", "--parseable"], host, 30_000)
    const copies = stdout.split("\n").filter((line) => line.length > 0)
    for (const name of packages) {
      expect(copies.filter((path) => path.endsWith(`/node_modules/${name}`))).toEqual([join(host, "node_modules", name)])
    }
  }, 40_000)

  it("typechecks a strict host program against the packed declarations, and runs it", async () => {
    for (const file of ["main.ts", "tsconfig.json"]) copyFileSync(join(hostSources, file), join(host, file))
    const tsc = join(host, "node_modules", ".bin", "tsc")
    // One compile is both the strict typecheck and the build: the host's
    // tsconfig sets noEmitOnError, so any type error fails here with tsc's output.
    await run(tsc, ["-p", "tsconfig.json"], host, 60_000)

    const { stdout } = await run(process.execPath, [join(host, "out", "main.js")], host, 30_000)
    expect(stdout.split("\n")).toContain("OK ok")
  }, 150_000)
})
