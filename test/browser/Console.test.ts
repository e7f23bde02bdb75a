/**
 * The console (GET /) in a real browser: Debian's chromium, driven by
 * playwright-core, against AIBase server processes on the offline model.
 * The page loads without console errors, a chat streams to its end frame,
 * cancel stops a stream, the charts show the traffic, and with AUTH_TOKENS
 * the page asks for a token. Screenshots go to test-results/console/.
 *
 * Run with `bash scripts/test-browser.sh`, which installs chromium if needed.
 */
import { mkdirSync } from "node:fs"
import { join } from "node:path"
import type { Browser, BrowserContext, Page } from "playwright-core"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { launch } from "../support/Chromium.js"
import * as ServerProcess from "../support/ServerProcess.js"
import * as Wait from "../support/Wait.js"

const ARTIFACTS = join(ServerProcess.repoRoot, "test-results", "console")
const TOKEN = "console-test-token"

/** Slow enough words that a stream can be watched and cancelled mid-way. */
const WORD_DELAY_MS = "60"

const startAiBase = (env: Record<string, string> = {}) =>
  ServerProcess.start({
    env: { LLM_PROVIDER: "offline", OFFLINE_WORD_DELAY_MS: WORD_DELAY_MS, ...env }
  })


/** Everything the page reports as an error: uncaught exceptions and console errors (CSP violations, failed loads). */
const watchErrors = (page: Page, errors: Array<string>) => {
  page.on("pageerror", (error) => errors.push(`pageerror: ${error.message}`))
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(`console: ${message.text()}`)
  })
}

const textOf = async (page: Page, selector: string) => (await page.locator(selector).textContent()) ?? ""

const numberOf = async (page: Page, selector: string) => Number(await textOf(page, selector))

const totalOf = async (page: Page, chart: string) => Number(await page.locator(`#${chart}`).getAttribute("data-total"))

/** Sends a message from the playground; resolves once its reply bubble is on screen. */
const send = async (page: Page, text: string, options: { readonly toolLoop: boolean }) => {
  await page.locator("#send:not([disabled])").waitFor({ timeout: 10_000 })
  await page.setChecked("#tool-loop", options.toolLoop)
  const before = await page.locator("[data-role=assistant]").count()
  await page.fill("#prompt", text)
  await page.click("#send")
  const bubble = page.locator("[data-role=assistant]").nth(before)
  await bubble.waitFor({ timeout: 5_000 })
  return bubble
}

const series = async (port: number, token?: string) => {
  const response = await fetch(`http://127.0.0.1:${port}/console/series?seconds=120`, {
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` }
  })
  return { status: response.status, body: response.status === 200 ? await response.json() as unknown : undefined }
}

const requestTotal = (body: unknown): number => {
  if (typeof body !== "object" || body === null || !("requests" in body)) return 0
  const requests = body.requests
  if (typeof requests !== "object" || requests === null) return 0
  let total = 0
  for (const column of Object.values(requests)) {
    if (Array.isArray(column)) for (const n of column) total += typeof n === "number" ? n : 0
  }
  return total
}

beforeAll(() => {
  mkdirSync(ARTIFACTS, { recursive: true })
})

describe("the console, auth off", () => {
  let server: ServerProcess.ServerProcess | undefined
  let browser: Browser | undefined
  let context: BrowserContext | undefined
  /** One page across the tests: its charts accumulate their traffic. */
  let page: Page
  const errors: Array<string> = []

  const port = () => {
    if (server === undefined) throw new Error("the server did not start")
    return server.port
  }

  beforeAll(async () => {
    const started = startAiBase()
    browser = await launch()
    server = await started
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
    page = await context.newPage()
    watchErrors(page, errors)
    await page.goto(`http://127.0.0.1:${server.port}/`)
    await page.locator("#status[data-state=connected]").waitFor({ timeout: 15_000 })
  })

  afterEach(() => {
    expect(errors).toEqual([])
  })

  afterAll(async () => {
    await context?.close()
    await browser?.close()
    if (server !== undefined) await ServerProcess.stop(server)
  })

  it("loads without errors, with the server's info, the default model and five charts", async () => {
    await expect(textOf(page, "#server-info")).resolves.toMatch(/^aibase \S+ · offline · tools: .*get_weather/)
    await expect(page.inputValue("#model")).resolves.toBe("gpt-4o-mini")
    await page.locator("body[data-series=ok]").waitFor({ timeout: 10_000 })
    await expect(page.locator(".chart .uplot canvas").count()).resolves.toBe(5)
    // The page's own WebSocket is one of the connections it charts.
    await Wait.waitForPromise(async () => (await numberOf(page, "#tile-connections")) >= 1, {
      message: "the connections tile to count the page's WebSocket",
      timeout: "10 seconds"
    })
  })

  it("streams a reply with the tool loop: each tool_execution, then the end frame's usage", async () => {
    const bubble = await send(page, "What's the weather in Paris?", { toolLoop: true })
    await bubble.and(page.locator("[data-state=done]")).waitFor({ timeout: 15_000 })

    const tool = bubble.locator("[data-testid=tool-execution]")
    await expect(tool.count()).resolves.toBe(1)
    const toolText = (await tool.textContent()) ?? ""
    expect(toolText).toContain(`get_weather({"location":"Paris"})`)
    expect(toolText).toMatch(/→ .*Weather in Paris/)
    await expect(bubble.locator("[data-testid=assistant-text]").textContent()).resolves.toContain(
      "[offline model] Based on get_weather"
    )
    await expect(bubble.locator("[data-testid=usage]").textContent()).resolves.toMatch(/^\d+ in · \d+ out · \d+ tokens$/)
    await expect(bubble.locator("[data-testid=meta]").textContent()).resolves.toContain("1 tool round")
  })

  it("shows a plain reply growing word by word until its end frame", async () => {
    const bubble = await send(page, "Please repeat all of this: one two three four five six seven eight", { toolLoop: false })
    const text = bubble.locator("[data-testid=assistant-text]")
    // Part of the reply is on screen while the stream still runs.
    await Wait.waitForPromise(
      async () => (await bubble.getAttribute("data-state")) === "streaming" && ((await text.textContent()) ?? "").length > 0,
      { message: "a partial reply while streaming", timeout: "10 seconds" }
    )
    await bubble.and(page.locator("[data-state=done]")).waitFor({ timeout: 15_000 })
    await expect(text.textContent()).resolves.toContain("eight")
    await expect(bubble.locator("[data-testid=usage]").textContent()).resolves.toMatch(/\d+ in · \d+ out/)
    await expect(page.locator("#cancel").isDisabled()).resolves.toBe(true)
  })

  it("cancels a reply mid-stream: nothing more arrives", async () => {
    const words = Array.from({ length: 80 }, (_, i) => `word${i}`).join(" ")
    const bubble = await send(page, `Please repeat all of this: ${words} THE-END`, { toolLoop: false })
    const text = bubble.locator("[data-testid=assistant-text]")
    await Wait.waitForPromise(async () => ((await text.textContent()) ?? "").split(" ").length >= 4, {
      message: "a few words of the reply",
      timeout: "10 seconds"
    })
    await page.click("#cancel")

    await bubble.and(page.locator("[data-state=cancelled]")).waitFor({ timeout: 5_000 })
    await expect(bubble.locator("[data-testid=note]").textContent()).resolves.toBe("Cancelled")
    const stopped = (await text.textContent()) ?? ""
    expect(stopped).not.toContain("THE-END")
    await Wait.expectNothingWithinPromise("400 millis", async () => ((await text.textContent()) ?? "") !== stopped, {
      message: "change to the cancelled reply",
      interval: "50 millis"
    })
    await expect(page.locator("#send").isEnabled()).resolves.toBe(true)
    await expect(page.locator("#cancel").isDisabled()).resolves.toBe(true)
  })

  it("charts the traffic: requests by status, the cancellation as an error, TTFT and tokens", async () => {
    // Three chats finished (two ok, one cancelled): the series say so...
    const seen = await Wait.waitForPromise(async () => requestTotal((await series(port())).body) >= 3, {
      message: "three finished requests in /console/series",
      timeout: "10 seconds"
    }).then(() => series(port()))
    expect(seen.status).toBe(200)

    // ...and so does the page, at its next refresh.
    await Wait.waitForPromise(async () => (await totalOf(page, "chart-requests")) >= 3, {
      message: "the requests chart to count three requests",
      timeout: "10 seconds"
    })
    await expect(page.locator("#chart-requests").getAttribute("data-lines")).resolves.toBe("ok,cancelled")
    // The first label is the x axis (Time).
    await expect(page.locator("#chart-requests .u-legend .u-label").allTextContents()).resolves.toEqual(["Time", "ok", "cancelled"])
    await expect(page.locator("#chart-errors").getAttribute("data-lines")).resolves.toBe("cancelled")
    await expect(totalOf(page, "chart-errors")).resolves.toBeGreaterThanOrEqual(1)
    await expect(totalOf(page, "chart-ttft")).resolves.toBeGreaterThanOrEqual(1)
    await expect(totalOf(page, "chart-tokens")).resolves.toBeGreaterThan(0)
    await expect(numberOf(page, "#tile-requests")).resolves.toBeGreaterThanOrEqual(3)
    await expect(numberOf(page, "#tile-errors")).resolves.toBeGreaterThanOrEqual(1)
    await expect(numberOf(page, "#tile-tokens")).resolves.toBeGreaterThan(0)
  })

  it("fits a desktop and a phone screen; screenshots of both", async () => {
    await page.screenshot({ path: join(ARTIFACTS, "desktop.png"), fullPage: true })

    if (browser === undefined) throw new Error("the browser did not start")
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true
    })
    const small = await phone.newPage()
    watchErrors(small, errors)
    await small.goto(`http://127.0.0.1:${port()}/`)
    await small.locator("#status[data-state=connected]").waitFor({ timeout: 15_000 })
    await small.locator("body[data-series=ok]").waitFor({ timeout: 10_000 })
    // Nothing wider than the screen: no sideways scrolling, charts sized to it.
    const widths = await small.evaluate(() => ({
      page: document.documentElement.scrollWidth,
      screen: window.innerWidth,
      charts: [...document.querySelectorAll(".chart canvas")].map((canvas) => canvas.getBoundingClientRect().right)
    }))
    expect(widths.page).toBeLessThanOrEqual(widths.screen)
    for (const right of widths.charts) expect(right).toBeLessThanOrEqual(widths.screen)
    const bubble = await send(small, "Hello from a phone", { toolLoop: false })
    await bubble.and(small.locator("[data-state=done]")).waitFor({ timeout: 15_000 })
    await small.screenshot({ path: join(ARTIFACTS, "phone.png"), fullPage: true })
    await phone.close()
  })
})

describe("the console, with AUTH_TOKENS", () => {
  let server: ServerProcess.ServerProcess | undefined
  let browser: Browser | undefined
  let context: BrowserContext | undefined
  const errors: Array<string> = []
  /** A rejected token makes the browser log the 401 it got; that one is expected. */
  const expected = (error: string) => /status of 401/.test(error)

  const port = () => {
    if (server === undefined) throw new Error("the server did not start")
    return server.port
  }

  beforeAll(async () => {
    const started = startAiBase({ AUTH_TOKENS: `other-token,${TOKEN}` })
    browser = await launch()
    server = await started
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
  })

  afterEach(() => {
    expect(errors.filter((error) => !expected(error))).toEqual([])
  })

  afterAll(async () => {
    await context?.close()
    await browser?.close()
    if (server !== undefined) await ServerProcess.stop(server)
  })

  it("serves the page and its assets without a token, and the series only with one", async () => {
    const page = await fetch(`http://127.0.0.1:${port()}/`)
    expect(page.status).toBe(200)
    expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8")
    const html = await page.text()
    expect(html).toContain(`<meta name="aibase-auth" content="required">`)
    const script = await fetch(`http://127.0.0.1:${port()}/console/assets/uPlot.esm.js`)
    expect(script.status).toBe(200)
    expect(script.headers.get("content-type")).toBe("text/javascript; charset=utf-8")
    // Only the listed files: no way out of the folder.
    for (const path of ["/console/assets/../../package.json", "/console/assets/%2e%2e%2fpackage.json", "/console/assets/index.html"]) {
      expect((await fetch(`http://127.0.0.1:${port()}${path}`)).status, path).not.toBe(200)
    }
    await expect(series(port())).resolves.toMatchObject({ status: 401 })
    await expect(series(port(), "wrong")).resolves.toMatchObject({ status: 401 })
    await expect(series(port(), TOKEN)).resolves.toMatchObject({ status: 200 })
  })

  it("asks for a token, rejects a wrong one, then works with the right one for this tab only", async () => {
    if (context === undefined || browser === undefined) throw new Error("the browser did not start")
    const page = await context.newPage()
    watchErrors(page, errors)
    const requested: Array<string> = []
    page.on("request", (request) => requested.push(new URL(request.url()).pathname))
    await page.goto(`http://127.0.0.1:${port()}/`)

    // Asked before anything that needs a token was requested.
    await page.locator("#auth:not([hidden])").waitFor({ timeout: 10_000 })
    await expect(page.locator("#app").isHidden()).resolves.toBe(true)
    await expect(page.locator("#status").getAttribute("data-state")).resolves.toBe("locked")
    expect(requested.filter((path) => path === "/info" || path === "/console/series" || path === "/ws")).toEqual([])

    await page.fill("#token", "not-the-token")
    await page.click("#token-submit")
    await page.locator("#auth[data-state=rejected]:not([hidden])").waitFor({ timeout: 10_000 })
    await expect(textOf(page, "#auth-message")).resolves.toContain("not accepted")
    await expect(page.evaluate(() => sessionStorage.length)).resolves.toBe(0)

    await page.fill("#token", TOKEN)
    await page.click("#token-submit")
    await page.locator("#status[data-state=connected]").waitFor({ timeout: 15_000 })
    await page.locator("body[data-series=ok]").waitFor({ timeout: 10_000 })
    await expect(page.locator("#auth").isHidden()).resolves.toBe(true)

    // The WebSocket carries it as ?token= (browsers cannot set its headers): a chat streams to its end.
    const bubble = await send(page, "Hello with a token", { toolLoop: false })
    await bubble.and(page.locator("[data-state=done]")).waitFor({ timeout: 15_000 })
    await expect(bubble.locator("[data-testid=usage]").textContent()).resolves.toMatch(/\d+ in · \d+ out/)
    await Wait.waitForPromise(async () => (await totalOf(page, "chart-requests")) >= 1, {
      message: "the requests chart to count the chat",
      timeout: "10 seconds"
    })

    // Kept in sessionStorage only; a reload of the tab keeps it, another tab does not have it.
    await expect(page.evaluate(() => ({ session: sessionStorage.length, local: localStorage.length }))).resolves.toEqual({
      session: 1,
      local: 0
    })
    await page.reload()
    await page.locator("#status[data-state=connected]").waitFor({ timeout: 15_000 })
    const other = await context.newPage()
    watchErrors(other, errors)
    await other.goto(`http://127.0.0.1:${port()}/`)
    await other.locator("#auth:not([hidden])").waitFor({ timeout: 10_000 })
    await page.screenshot({ path: join(ARTIFACTS, "with-token.png"), fullPage: true })
    await other.screenshot({ path: join(ARTIFACTS, "token-prompt.png") })
    await other.close()

    // Forgetting it locks the page again.
    await page.click("#forget-token")
    await page.locator("#auth:not([hidden])").waitFor({ timeout: 5_000 })
    await expect(page.evaluate(() => sessionStorage.length)).resolves.toBe(0)
    await page.close()
  })
})
