import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

/**
 * The console's browser test, kept apart from the root suite (whose config
 * excludes test/browser). Run it with scripts/test-browser.sh, which installs
 * chromium first.
 */
export default defineConfig({
  root: fileURLToPath(new URL("../..", import.meta.url)),
  test: {
    include: ["test/browser/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks"
  }
})
