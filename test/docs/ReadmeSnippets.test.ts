/**
 * Every TypeScript snippet of the README's "Using AIBase from an Effect
 * application" section is a whole module that compiles, in strict mode,
 * against the package's public entry point: the docs cannot drift from the API.
 */
import { describe, expect, it } from "@effect/vitest"
import { execFile } from "node:child_process"
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))
const SECTION = "## Using AIBase from an Effect application"

/** The ```ts blocks of one README section. */
export const snippetsOf = (readme: string, heading: string): ReadonlyArray<string> => {
  const start = readme.indexOf(`${heading}\n`)
  if (start === -1) return []
  const next = readme.indexOf("\n## ", start + heading.length)
  const section = readme.slice(start, next === -1 ? undefined : next)
  return [...section.matchAll(/```ts\n([\s\S]*?)```/g)].flatMap((match) => match[1] === undefined ? [] : [match[1]])
}

const tsc = (project: string) =>
  new Promise<{ readonly code: number; readonly output: string }>((resolve) => {
    execFile(
      process.execPath,
      [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", project],
      { cwd: root, timeout: 120_000 },
      (error, stdout, stderr) => resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, output: stdout + stderr })
    )
  })

describe("the README's Effect snippets", () => {
  it("compile against the public API in strict mode", async () => {
    const snippets = snippetsOf(readFileSync(join(root, "README.md"), "utf8"), SECTION)
    expect(snippets.length).toBeGreaterThanOrEqual(5)
    // Under node_modules, so that the snippets resolve effect and @effect/* as the repository does.
    const folder = join(root, "node_modules", ".cache", `aibase-readme-snippets-${process.pid}`)
    mkdirSync(folder, { recursive: true })
    try {
      snippets.forEach((snippet, index) => writeFileSync(join(folder, `snippet${index + 1}.ts`), snippet))
      writeFileSync(
        join(folder, "tsconfig.json"),
        JSON.stringify({
          extends: join(root, "tsconfig.json"),
          compilerOptions: {
            noEmit: true,
            noUnusedLocals: false,
            // "aibase" is this repository, as a host that installed it sees it.
            paths: { "aibase": [join(root, "src", "index.ts")], "aibase/protocol": [join(root, "src", "protocol", "index.ts")] }
          },
          include: ["*.ts"]
        })
      )
      const { code, output } = await tsc(join(folder, "tsconfig.json"))
      expect(output).toBe("")
      expect(code).toBe(0)
    } finally {
      rmSync(folder, { recursive: true, force: true })
    }
  }, 120_000)
})
