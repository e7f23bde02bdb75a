/**
 * The JSON text a value was parsed from, where that text can stand for the
 * value on the wire.
 *
 * What the model provider answers is usually already in its wire form (an
 * embeddings response with exactly the expected fields). Such a value keeps
 * its text here, so a transport can put the text into its frame instead of
 * encoding and stringifying the value again: for an embedding, that is a
 * JSON.stringify of 1,536 floats. Only values whose Schema encodes them to
 * themselves, checked to carry no field the Schema would strip, may be
 * remembered. (A weak map costs about as much as stringifying a small
 * value, so streamed chunks pass their text along the sink instead: see
 * Push.Sink.)
 */
const texts = new WeakMap<object, string>()

/** Notes that `text` is the JSON of `value`; returns `value`. */
export const remember = <A extends object>(value: A, text: string): A => {
  texts.set(value, text)
  return value
}

/** The JSON text of `value`, when it was remembered. */
export const textOf = (value: unknown): string | undefined =>
  typeof value === "object" && value !== null ? texts.get(value) : undefined
