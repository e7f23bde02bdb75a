#!/usr/bin/env bash
# Makes sure Debian's chromium is at /usr/bin/chromium for the browser test.
# Installs it with apt-get when missing: as root directly, else via passwordless sudo.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  exit 0
fi

install_cmd=(env DEBIAN_FRONTEND=noninteractive sh -c
  'apt-get update && apt-get install -y --no-install-recommends chromium')

if [ "$(id -u)" -eq 0 ]; then
  echo "ensure-chromium: installing chromium with apt-get" >&2
  "${install_cmd[@]}"
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  echo "ensure-chromium: installing chromium with sudo apt-get" >&2
  sudo -n "${install_cmd[@]}"
else
  cat >&2 <<MSG
ensure-chromium: $CHROMIUM is missing and this user cannot install it
(not root, no passwordless sudo). Install it once with:
  sudo apt-get install -y --no-install-recommends chromium
then run the browser test again.
MSG
  exit 2
fi

if [ ! -x "$CHROMIUM" ]; then
  echo "ensure-chromium: apt-get finished but $CHROMIUM is still missing" >&2
  exit 1
fi
"$CHROMIUM" --version >&2 || true
