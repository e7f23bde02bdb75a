#!/usr/bin/env bash
# The browser test of examples/typescript-client: makes sure Debian's chromium
# and the example's dependencies (vite) are installed, then runs the test with
# the root vitest and playwright-core. Extra arguments go to vitest.
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

exec npx vitest run --config "$example/vitest.config.ts" "$@"
