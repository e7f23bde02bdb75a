/**
 * Debian's chromium under playwright-core, as the browser tests launch it
 * (scripts/ensure-chromium.sh installs it): headless, and quiet on the
 * network, so that nothing leaves 127.0.0.1.
 */
import { type Browser, chromium } from "playwright-core"

export const CHROMIUM = "/usr/bin/chromium"

export const launch = (): Promise<Browser> =>
  chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync"
    ]
  })
