#!/usr/bin/env bash
# The browser tests: examples/typescript-client's chat client, then the
# console AIBase serves at / (test/browser). Makes sure Debian's chromium and
# the example's dependencies (vite) are installed, then runs both with the
# root vitest and playwright-core. Extra arguments go to both vitest runs.
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/ensure-chromium.sh

example=examples/typescript-client
if [ ! -f "$example/package-lock.json" ]; then
  npm install --prefix "$example" --no-audit --no-fund
elif [ ! "$example/node_modules/.package-lock.json" -nt "$example/package-lock.json" ]; then
  # npm ci, unless an install from the current lockfile is already there.
  npm ci --prefix "$example" --no-audit --no-fund
fi

# Both run even when the first fails; the script fails if either did.
# --passWithNoTests: a filter among the arguments may match only one of them.
status=0
npx vitest run --config "$example/vitest.config.ts" --passWithNoTests "$@" || status=$?
npx vitest run --config test/browser/vitest.config.ts --passWithNoTests "$@" || status=$?
exit "$status"
