#!/usr/bin/env bash
# The browser test of examples/typescript-client: makes sure chromium and the
# example's dependencies (vite) are installed, then runs the test with vitest.
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/ensure-chromium.sh

example=examples/typescript-client
if [ -f "$example/package-lock.json" ]; then
  npm ci --prefix "$example" --no-audit --no-fund
else
  npm install --prefix "$example" --no-audit --no-fund
fi

exec npx vitest run --config "$example/vitest.config.ts" "$@"
