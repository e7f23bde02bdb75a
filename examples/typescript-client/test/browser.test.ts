/**
 * The chat client in a real browser: Debian's chromium (driven by
 * playwright-core) loads the page from a Vite dev server and talks to AIBase
 * servers on the offline model. Everything listens on 127.0.0.1.
 *
 * Run with `bash scripts/test-browser.sh`, which installs chromium if needed.
 */
import { fileURLToPath } from "node:url"
import type { Browser, Page } from "playwright-core"
import { createServer, type ViteDevServer } from "vite"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { launch } from "../../../test/support/Chromium.js"
import * as ServerProcess from "../../../test/support/ServerProcess.js"
import * as Wait from "../../../test/support/Wait.js"

declare global {
  interface Window {
    /** Successive texts of the newest assistant bubble, recorded by `recordAssistant`. */
    assistantTexts?: Array<string>
    assistantObserver?: MutationObserver
  }
}

const exampleRoot = fileURLToPath(new URL("..", import.meta.url))
const HOST = "127.0.0.1"

// ---------------------------------------------------------------------------
// AIBase servers as child processes (offline model)

type AiBase = ServerProcess.ServerProcess

const startAiBase = (env: Record<string, string> = {}, port = 0): Promise<AiBase> =>
  ServerProcess.start({ env: { LLM_PROVIDER: "offline", SERVER_PORT: String(port), ...env } })

const portOf = (server: AiBase | undefined): number => {
  if (server === undefined) throw new Error("the server did not start")
  return server.port
}

const stopAiBase = async (server: AiBase | undefined, signal: NodeJS.Signals = "SIGTERM"): Promise<void> => {
  if (server !== undefined) await ServerProcess.stop(server, signal)
}

// ---------------------------------------------------------------------------
// page helpers

const assistant = (page: Page) => page.locator("[data-role=assistant]").last()

const expectStatus = (page: Page, state: string, timeout = 15_000) =>
  page.locator(`#status[data-state=${state}]`).waitFor({ timeout })

/** Records every text the newest assistant bubble shows, so a test can see the reply grow. */
const recordAssistant = (page: Page) =>
  page.evaluate(() => {
    window.assistantTexts = []
    if (window.assistantObserver !== undefined) return
    const messages = document.getElementById("messages") ?? document.body
    window.assistantObserver = new MutationObserver(() => {
      const texts = window.assistantTexts ?? []
      const bubbles = messages.querySelectorAll("[data-role=assistant] .body")
      const text = bubbles[bubbles.length - 1]?.textContent ?? ""
      if (text !== texts[texts.length - 1]) texts.push(text)
    })
    window.assistantObserver.observe(messages, { subtree: true, childList: true, characterData: true })
  })

const recorded = (page: Page) => page.evaluate(() => window.assistantTexts ?? [])

const send = async (page: Page, text: string) => {
  await page.locator("#send:not([disabled])").waitFor({ timeout: 10_000 })
  await page.fill("#input", text)
  await page.click("#send")
}

/** Sends a message and waits until its reply has finished streaming. */
const chat = async (page: Page, text: string) => {
  const before = await page.locator("[data-role=assistant]").count()
  await send(page, text)
  await page.locator("[data-role=assistant]").nth(before).and(page.locator("[data-state=done]")).waitFor({ timeout: 10_000 })
  return assistant(page)
}

// ---------------------------------------------------------------------------

describe("the browser chat client", () => {
  let server: AiBase | undefined
  let slowServer: AiBase | undefined
  let vite: ViteDevServer | undefined
  let browser: Browser | undefined
  /** The page on `server`, one conversation across the tests that use it. */
  let page: Page
  let pageUrl = ""
  const pageErrors: Array<string> = []

  /** Opens the page on the server at `port`; `query` adds parameters (e.g. `&dropAfter=3`). */
  const open = async (port: number, query = ""): Promise<Page> => {
    if (browser === undefined) throw new Error("the browser did not start")
    const opened = await browser.newPage()
    opened.on("pageerror", (error) => pageErrors.push(error.message))
    await opened.goto(`${pageUrl}?server=${encodeURIComponent(`ws://${HOST}:${port}/ws`)}${query}`)
    await expectStatus(opened, "connected")
    return opened
  }

  beforeAll(async () => {
    const started = Promise.all([startAiBase(), startAiBase({ OFFLINE_WORD_DELAY_MS: "80" })])
    vite = await createServer({
      root: exampleRoot,
      configFile: false,
      logLevel: "warn",
      clearScreen: false,
      // The first free port from 5173 on.
      server: { host: HOST, strictPort: false, hmr: false },
      optimizeDeps: { noDiscovery: true, include: [] }
    })
    await vite.listen()
    const url = vite.resolvedUrls?.local[0]
    if (url === undefined) throw new Error("Vite did not report its URL")
    pageUrl = url
    browser = await launch()
    ;[server, slowServer] = await started
    page = await open(server.port)
  })

  afterEach(() => {
    expect(pageErrors).toEqual([])
  })

  afterAll(async () => {
    await browser?.close()
    await vite?.close()
    await Promise.all([stopAiBase(server), stopAiBase(slowServer)])
  })

  it("streams a reply into the assistant bubble", async () => {
    await recordAssistant(page)
    const bubble = await chat(page, "Hello from the browser")

    const final = (await bubble.locator("[data-testid=assistant-text]").textContent()) ?? ""
    expect(final).toContain("[offline model]")
    expect(final).toContain("Hello from the browser")
    await expect(page.locator("[data-role=user]").last().textContent()).resolves.toBe("YouHello from the browser")

    // The reply grew word by word: partial texts were on screen before the whole one.
    const texts = await recorded(page)
    const partial = texts.filter((text) => text.length > 0 && text.length < final.length && final.startsWith(text))
    expect(partial.length).toBeGreaterThanOrEqual(3)
    expect(texts.at(-1)).toBe(final)
    await expect(page.locator("#cancel").isDisabled()).resolves.toBe(true)
  })

  it("shows a tool call and its result, then the answer", async () => {
    await recordAssistant(page)
    const bubble = await chat(page, "What's the weather in Paris?")

    const tool = bubble.locator("[data-testid=tool-call]")
    await expect(tool.count()).resolves.toBe(1)
    await expect(tool.getAttribute("data-state")).resolves.toBe("done")
    const toolText = (await tool.textContent()) ?? ""
    expect(toolText).toContain("get_weather")
    expect(toolText).toContain(`{"location":"Paris"}`)
    expect(toolText).toMatch(/→ .*Weather in Paris/)

    const answer = (await bubble.locator("[data-testid=assistant-text]").textContent()) ?? ""
    expect(answer).toContain("[offline model] Based on get_weather")
    expect(answer).toContain("Paris")
    // The call was on screen before the answer began.
    const texts = await recorded(page)
    expect(texts.some((text) => text.includes("get_weather") && !text.includes("Based on"))).toBe(true)
  })

  it("cancels a reply mid-stream", async () => {
    const slow = await open(portOf(slowServer))
    const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(" ")
    await send(slow, `Please repeat all of this: ${words} THE-END`)
    const bubble = assistant(slow)
    const text = bubble.locator("[data-testid=assistant-text]")
    await expect.poll(async () => ((await text.textContent()) ?? "").split(" ").length, { timeout: 10_000 })
      .toBeGreaterThanOrEqual(4)
    await expect(slow.locator("#cancel").isEnabled()).resolves.toBe(true)
    await slow.click("#cancel")

    await bubble.and(slow.locator("[data-state=cancelled]")).waitFor({ timeout: 5_000 })
    await expect(bubble.locator("[data-testid=note]").textContent()).resolves.toContain("Cancelled")
    const stopped = (await text.textContent()) ?? ""
    expect(stopped).toContain("[offline model]")
    expect(stopped).not.toContain("THE-END")
    // Nothing more arrives after the cancel.
    await Wait.expectNothingWithinPromise(400, async () => ((await text.textContent()) ?? "") !== stopped, {
      message: "change to the cancelled reply",
      interval: 50
    })
    await expect(slow.locator("#send").isEnabled()).resolves.toBe(true)
    await expect(slow.locator("#cancel").isDisabled()).resolves.toBe(true)
    await slow.close()
  })

  it("resumes a reply after the connection drops mid-stream, with the same text", { timeout: 40_000 }, async () => {
    const message = `Please repeat all of this: ${Array.from({ length: 8 }, (_, i) => `word${i}`).join(" ")} THE-END`
    // The offline model answers the same conversation with the same text: this is the reply uninterrupted.
    const plain = await open(portOf(slowServer))
    const whole = (await (await chat(plain, message)).locator("[data-testid=assistant-text]").textContent()) ?? ""
    await plain.close()
    expect(whole).toContain("THE-END")

    // ?dropAfter=3 closes the connection after the reply's third text chunk, while the slow server is still streaming.
    const dropping = await open(portOf(slowServer), "&dropAfter=3")
    await recordAssistant(dropping)
    const bubble = await chat(dropping, message)
    const resumed = (await bubble.locator("[data-testid=assistant-text]").textContent()) ?? ""
    expect(resumed).toBe(whole)
    await expect(bubble.locator("[data-testid=resume-note]").textContent()).resolves.toMatch(
      /connection dropped after seq \d+; the reply was resumed/
    )
    // No gap and no repeat on screen either: every text shown was the start of the whole reply.
    const texts = await recorded(dropping)
    expect(texts.filter((text) => !whole.startsWith(text))).toEqual([])
    expect(texts.at(-1)).toBe(whole)
    await expectStatus(dropping, "connected")
    await expect(dropping.locator("#send").isEnabled()).resolves.toBe(true)
    await dropping.close()
  })

  it("reconnects after the server goes away and comes back on the same port", { timeout: 50_000 }, async () => {
    const port = portOf(server)
    const users = await page.locator("[data-role=user]").count()

    await stopAiBase(server, "SIGKILL")
    await expectStatus(page, "disconnected", 10_000)
    await expect(page.locator("#send").isDisabled()).resolves.toBe(true)

    server = await startAiBase({}, port)
    expect(server.port).toBe(port)
    await expectStatus(page, "connected", 20_000)

    const bubble = await chat(page, "After the drop")
    await expect(bubble.locator("[data-testid=assistant-text]").textContent()).resolves.toContain("After the drop")
    // The conversation survived the drop.
    await expect(page.locator("[data-role=user]").count()).resolves.toBe(users + 1)
  })
})
