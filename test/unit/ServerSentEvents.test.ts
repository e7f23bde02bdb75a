/**
 * The synchronous server-sent events decoder the upstream stream is read
 * with: events come out whole however the text is cut into reads, with LF or
 * CRLF line ends, joined data lines, comments skipped and the `event` field
 * passed along.
 */
import { describe, expect, it } from "@effect/vitest"
import { StringDecoder } from "node:string_decoder"
import { Decoder } from "../../src/openai/ServerSentEvents.js"

interface Event {
  readonly data: string
  readonly event: string | undefined
}

/** A decoder that records its events, and a `feed` over it. */
const recorder = () => {
  const events: Array<Event> = []
  const decoder = new Decoder((data, event) => {
    events.push({ data, event })
  })
  return { events, feed: (text: string) => decoder.feed(text) }
}

/** The events of `pieces` fed one after another. */
const decode = (...pieces: ReadonlyArray<string>): Array<Event> => {
  const { events, feed } = recorder()
  for (const piece of pieces) feed(piece)
  return events
}

const data = (text: string, event?: string): Event => ({ data: text, event })

/** A stream with every feature the decoder handles, with `\n` line ends. */
const STREAM = [
  ": a comment before anything",
  "data: {\"id\":1,\"text\":\"héllo wörld ✓ 😀\"}",
  "",
  "event: error",
  "data: {\"error\":{\"message\":\"boom\"}}",
  "",
  "data: first line",
  "data:second line",
  ": a comment inside an event",
  "id: 7",
  "retry: 1000",
  "data:  leading space kept",
  "",
  "data",
  "",
  "",
  "data: [DONE]",
  "",
  ""
].join("\n")

const STREAM_EVENTS: ReadonlyArray<Event> = [
  data("{\"id\":1,\"text\":\"héllo wörld ✓ 😀\"}"),
  data("{\"error\":{\"message\":\"boom\"}}", "error"),
  data("first line\nsecond line\n leading space kept"),
  data(""),
  data("[DONE]")
]

describe("ServerSentEvents.Decoder", () => {
  it("decodes a whole stream in one feed", () => {
    expect(decode(STREAM)).toEqual(STREAM_EVENTS)
  })

  for (const [name, lineEnd] of [["LF", "\n"], ["CRLF", "\r\n"]] as const) {
    const text = STREAM.replaceAll("\n", lineEnd)

    it(`${name}: the same events whatever position the text is split at (every position, two feeds)`, () => {
      for (let at = 0; at <= text.length; at++) {
        expect(decode(text.slice(0, at), text.slice(at)), `split at ${at}`).toEqual(STREAM_EVENTS)
      }
    })

    it(`${name}: the same events when fed one character at a time, or in three pieces`, () => {
      expect(decode(...text)).toEqual(STREAM_EVENTS)
      for (let a = 0; a <= text.length; a += 7) {
        for (let b = a; b <= text.length; b += 11) {
          expect(decode(text.slice(0, a), text.slice(a, b), text.slice(b)), `split at ${a} and ${b}`).toEqual(STREAM_EVENTS)
        }
      }
    })

    it(`${name}: the same events when the UTF-8 bytes are split at every byte (through a StringDecoder, as the client reads)`, () => {
      const bytes = Buffer.from(text, "utf8")
      for (let at = 0; at <= bytes.length; at++) {
        const utf8 = new StringDecoder("utf8")
        expect(decode(utf8.write(bytes.subarray(0, at)), utf8.write(bytes.subarray(at)), utf8.end()), `split at byte ${at}`)
          .toEqual(STREAM_EVENTS)
      }
    })
  }

  it("mixed LF and CRLF line ends in one stream", () => {
    expect(decode("data: a\r\ndata: b\n\r\nevent: x\r\ndata: c\n\n")).toEqual([data("a\nb"), data("c", "x")])
  })

  it("data lines of one event are joined with \\n; empty data lines count", () => {
    expect(decode("data: one\ndata: two\ndata: three\n\n")).toEqual([data("one\ntwo\nthree")])
    expect(decode("data: one\ndata:\ndata: three\n\n")).toEqual([data("one\n\nthree")])
  })

  it("`data:` with and without the space after the colon; only one space is removed", () => {
    expect(decode("data:x\n\n", "data: x\n\n", "data:  x\n\n", "data:\tx\n\n")).toEqual([
      data("x"),
      data("x"),
      data(" x"),
      data("\tx")
    ])
  })

  it("a colon in the value is kept (only the first colon separates the field)", () => {
    expect(decode("data: {\"a\":\"b:c\"}\n\n", "event: a:b\ndata: x\n\n")).toEqual([data("{\"a\":\"b:c\"}"), data("x", "a:b")])
  })

  it("a field without a value: `data` alone is an empty data line, `event` alone an empty event name", () => {
    expect(decode("data\n\n")).toEqual([data("")])
    expect(decode("data\ndata: x\n\n")).toEqual([data("\nx")])
    expect(decode("event\ndata: x\n\n")).toEqual([data("x", "")])
  })

  it("passes the `event` field with its event, and does not carry it over to the next event", () => {
    expect(decode("event: thread.run\ndata: 1\n\ndata: 2\n\n")).toEqual([data("1", "thread.run"), data("2")])
  })

  it("comments are ignored, also between events, and a block of only comments is no event", () => {
    expect(decode(": keep-alive\n\n", ":\n\n", ":no space\ndata: x\n: another\n\n")).toEqual([data("x")])
  })

  it("fields other than data and event (id, retry, unknown ones) are ignored", () => {
    expect(decode("id: 1\nretry: 5\nfoo: bar\n\n")).toEqual([])
    expect(decode("id: 1\nretry: 5\nfoo: bar\ndata: x\nDATA: y\n\n")).toEqual([data("x")])
  })

  it("blank lines without fields before them deliver nothing", () => {
    expect(decode("\n\n\r\n\n")).toEqual([])
  })

  it("no event for an unterminated block until its blank line arrives", () => {
    const { events, feed } = recorder()
    feed("data: partial")
    expect(events).toEqual([])
    feed(" line")
    expect(events).toEqual([])
    feed("\n")
    expect(events).toEqual([])
    feed("data: more\r\n")
    expect(events).toEqual([])
    feed("\r")
    expect(events).toEqual([])
    feed("\n")
    expect(events).toEqual([data("partial line\nmore")])
  })

  it("delivers each event during the feed that completes it, in order, several per feed", () => {
    const { events, feed } = recorder()
    feed("data: 1\n\ndata: 2\n\ndata: 3")
    expect(events.map((e) => e.data)).toEqual(["1", "2"])
    feed("\n\n")
    expect(events.map((e) => e.data)).toEqual(["1", "2", "3"])
  })

  it("a long stream of many events split into uneven reads", () => {
    const count = 2000
    const text = Array.from({ length: count }, (_, i) => `data: {"n":${i}}\r\n\r\n`).join("")
    const sizes = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987]
    const pieces: Array<string> = []
    for (let at = 0, i = 0; at < text.length; i++) {
      const size = sizes[i % sizes.length]!
      pieces.push(text.slice(at, at + size))
      at += size
    }
    const events = decode(...pieces)
    expect(events).toHaveLength(count)
    expect(events.every((event, i) => event.data === `{"n":${i}}` && event.event === undefined)).toBe(true)
  })
})

describe("Decoder, blocks without data", () => {
  it("dispatches nothing for a block with only an event name, and does not carry the name over", () => {
    const events: Array<[string, string | undefined]> = []
    const decoder = new Decoder((data, event) => events.push([data, event]))
    decoder.feed("event: ping\n\ndata: x\n\n")
    expect(events).toEqual([["x", undefined]])
  })
})
