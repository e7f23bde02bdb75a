import { fileURLToPath } from "node:url"
import { configDefaults, defineConfig } from "vitest/config"

export default defineConfig({
  resolve: {
    // Tests import the package by name, as its users do; resolve it to the source.
    alias: [
      { find: /^aibase\/protocol$/, replacement: fileURLToPath(new URL("./src/protocol/index.ts", import.meta.url)) },
      { find: /^aibase$/, replacement: fileURLToPath(new URL("./src/index.ts", import.meta.url)) }
    ]
  },
  test: {
    include: ["test/**/*.test.ts"],
    // The browser tests run on their own (scripts/test-browser.sh, test/browser/vitest.config.ts).
    exclude: [...configDefaults.exclude, "test/browser/**"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration tests start servers on random loopback ports; files run in parallel workers.
    pool: "forks"
  }
})
