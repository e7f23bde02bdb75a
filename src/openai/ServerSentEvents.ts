/**
 * A synchronous decoder for server-sent events (the `text/event-stream`
 * format model providers stream in). Text goes in as it arrives, in pieces
 * of any size; each complete event comes out through one callback call, so
 * a network read that holds many events is decoded in one pass rather than
 * through a chain of async iterators.
 *
 * Lines end with LF or CRLF; `data:` lines of one event are joined with LF;
 * comments (lines starting with `:`) and fields other than `data` and
 * `event` are ignored.
 */
export type OnEvent = (data: string, event: string | undefined) => void

export class Decoder {
  private rest = ""
  private data: Array<string> = []
  private event: string | undefined = undefined

  constructor(private readonly onEvent: OnEvent) {}

  /** Decodes the text that arrived; events it completes are delivered before it returns. */
  feed(text: string): void {
    const buffer = this.rest.length === 0 ? text : this.rest + text
    let start = 0
    let end = buffer.indexOf("\n", start)
    while (end !== -1) {
      const line = end > start && buffer.charCodeAt(end - 1) === 13 ? buffer.slice(start, end - 1) : buffer.slice(start, end)
      this.line(line)
      start = end + 1
      end = buffer.indexOf("\n", start)
    }
    this.rest = start === 0 ? buffer : buffer.slice(start)
  }

  private line(line: string): void {
    if (line.length === 0) return this.dispatch()
    if (line.charCodeAt(0) === 58) return // ":" starts a comment
    const colon = line.indexOf(":")
    const field = colon === -1 ? line : line.slice(0, colon)
    let value = colon === -1 ? "" : line.slice(colon + 1)
    if (value.charCodeAt(0) === 32) value = value.slice(1)
    if (field === "data") this.data.push(value)
    else if (field === "event") this.event = value
  }

  private dispatch(): void {
    // As the spec says, a block without data dispatches nothing.
    if (this.data.length === 0) {
      this.event = undefined
      return
    }
    const data = this.data.length === 1 ? this.data[0]! : this.data.join("\n")
    const event = this.event
    this.data = []
    this.event = undefined
    this.onEvent(data, event)
  }
}
