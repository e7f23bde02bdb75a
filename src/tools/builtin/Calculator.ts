/** The built-in `calculator` tool: a small, safe arithmetic evaluator (a parser, never eval). */
import { Data, Effect, Either, Schema } from "effect"
import * as Tool from "../Tool.js"

/** Longest expression accepted; also enforced by the tool's parameter Schema. */
export const MAX_EXPRESSION_LENGTH = 1000
/** Deepest nesting of parentheses, function calls, unary signs and exponents. */
export const MAX_DEPTH = 64

export type CalculatorErrorKind =
  | "Syntax"
  | "UnknownName"
  | "Arity"
  | "DivisionByZero"
  | "NonFinite"
  | "TooLong"
  | "TooDeep"

/** Why an expression could not be evaluated; `position` is a 0-based character offset. */
export class CalculatorError extends Data.TaggedError("CalculatorError")<{
  readonly kind: CalculatorErrorKind
  readonly message: string
  readonly position: number
}> {}

// ---------------------------------------------------------------------------
// Functions and constants

interface Fn {
  readonly minArgs: number
  /** undefined = variadic */
  readonly maxArgs: number | undefined
  readonly apply: (args: ReadonlyArray<number>) => number
}

const unary = (f: (x: number) => number): Fn => ({
  minArgs: 1,
  maxArgs: 1,
  apply: (args) => f(args[0] ?? Number.NaN)
})

const variadic = (f: (...xs: Array<number>) => number): Fn => ({
  minArgs: 1,
  maxArgs: undefined,
  apply: (args) => f(...args)
})

const functions: ReadonlyMap<string, Fn> = new Map<string, Fn>([
  ["sqrt", unary(Math.sqrt)],
  ["abs", unary(Math.abs)],
  ["min", variadic(Math.min)],
  ["max", variadic(Math.max)],
  ["round", unary(Math.round)],
  ["floor", unary(Math.floor)],
  ["ceil", unary(Math.ceil)],
  ["log", unary(Math.log)],
  ["ln", unary(Math.log)],
  ["log10", unary(Math.log10)],
  ["log2", unary(Math.log2)],
  ["exp", unary(Math.exp)],
  ["sin", unary(Math.sin)],
  ["cos", unary(Math.cos)],
  ["tan", unary(Math.tan)]
])

const constants: ReadonlyMap<string, number> = new Map([
  ["pi", Math.PI],
  ["e", Math.E]
])

const functionNames = [...functions.keys()].join(", ")
const constantNames = [...constants.keys()].join(", ")

// ---------------------------------------------------------------------------
// Tokens

type Token =
  | { readonly _tag: "Number"; readonly value: number; readonly text: string; readonly pos: number }
  | { readonly _tag: "Name"; readonly name: string; readonly text: string; readonly pos: number }
  | { readonly _tag: "Op"; readonly op: BinaryOp; readonly text: string; readonly pos: number }
  | { readonly _tag: "LParen" | "RParen" | "Comma"; readonly text: string; readonly pos: number }
  | { readonly _tag: "End"; readonly text: string; readonly pos: number }

type BinaryOp = "+" | "-" | "*" | "/" | "%" | "^"

const isDigit = (c: string | undefined): boolean => c !== undefined && c >= "0" && c <= "9"
const isNameStart = (c: string | undefined): boolean => c !== undefined && /[A-Za-z_]/.test(c)
const isNamePart = (c: string | undefined): boolean => c !== undefined && /[A-Za-z0-9_]/.test(c)

const at = (position: number): string => `at position ${position}`

/** Internal control flow of the parser; always caught by `evaluate`. */
function fail(kind: CalculatorErrorKind, position: number, message: string): never {
  throw new CalculatorError({ kind, message, position })
}

const tokenize = (src: string): Array<Token> => {
  const tokens: Array<Token> = []
  let i = 0
  while (i < src.length) {
    const c = src[i]
    if (c === undefined) break
    if (/\s/.test(c)) {
      i++
      continue
    }
    const start = i
    if (isDigit(c) || (c === "." && isDigit(src[i + 1]))) {
      while (isDigit(src[i])) i++
      if (src[i] === ".") {
        i++
        while (isDigit(src[i])) i++
      }
      if (src[i] === "e" || src[i] === "E") {
        const sign = src[i + 1] === "+" || src[i + 1] === "-" ? 1 : 0
        if (isDigit(src[i + 1 + sign])) {
          i += 1 + sign
          while (isDigit(src[i])) i++
        } else {
          // "2e" or "2e+" would otherwise silently become 2 followed by the constant e.
          fail("Syntax", start, `Malformed number "${src.slice(start, i + 1 + sign)}" ${at(start)}`)
        }
      }
      const text = src.slice(start, i)
      const value = Number(text)
      if (!Number.isFinite(value)) fail("NonFinite", start, `Number "${text}" ${at(start)} is too large`)
      tokens.push({ _tag: "Number", value, text, pos: start })
      continue
    }
    if (isNameStart(c)) {
      while (isNamePart(src[i])) i++
      const text = src.slice(start, i)
      tokens.push({ _tag: "Name", name: text.toLowerCase(), text, pos: start })
      continue
    }
    if (c === "*" && src[i + 1] === "*") {
      tokens.push({ _tag: "Op", op: "^", text: "**", pos: start })
      i += 2
      continue
    }
    switch (c) {
      case "+":
      case "-":
      case "*":
      case "/":
      case "%":
      case "^":
        tokens.push({ _tag: "Op", op: c, text: c, pos: start })
        break
      case "(":
        tokens.push({ _tag: "LParen", text: c, pos: start })
        break
      case ")":
        tokens.push({ _tag: "RParen", text: c, pos: start })
        break
      case ",":
        tokens.push({ _tag: "Comma", text: c, pos: start })
        break
      default:
        fail("Syntax", start, `Unexpected character "${c}" ${at(start)}`)
    }
    i++
  }
  return tokens
}

// ---------------------------------------------------------------------------
// Syntax tree

type Node =
  | { readonly _tag: "Num"; readonly value: number; readonly start: number; readonly end: number }
  | { readonly _tag: "Neg"; readonly operand: Node; readonly start: number; readonly end: number }
  | {
    readonly _tag: "Binary"
    readonly op: BinaryOp
    readonly opPos: number
    readonly left: Node
    readonly right: Node
    readonly start: number
    readonly end: number
  }
  | {
    readonly _tag: "Call"
    readonly name: string
    readonly fn: Fn
    readonly args: ReadonlyArray<Node>
    readonly start: number
    readonly end: number
  }

const describe = (token: Token): string => token._tag === "End" ? "end of input" : `"${token.text}"`

/**
 * Recursive descent, one function per precedence level (lowest first):
 *   expr    := term (("+" | "-") term)*
 *   term    := unary (("*" | "/" | "%") unary)*
 *   unary   := ("-" | "+") unary | power
 *   power   := primary (("^" | "**") unary)?      right-associative; -2^2 = -(2^2)
 *   primary := number | constant | name "(" expr ("," expr)* ")" | "(" expr ")"
 */
class Parser {
  private index = 0
  private depth = 0

  constructor(private readonly tokens: ReadonlyArray<Token>, private readonly end: Token) {}

  parse(): Node {
    const node = this.expr()
    const next = this.peek()
    if (next._tag !== "End") {
      fail("Syntax", next.pos, `Unexpected ${describe(next)} ${at(next.pos)} after a complete expression`)
    }
    return node
  }

  private peek(): Token {
    return this.tokens[this.index] ?? this.end
  }

  private next(): Token {
    const token = this.peek()
    if (token._tag !== "End") this.index++
    return token
  }

  /** Runs a nested parse, keeping recursion (and so the stack) bounded. */
  private nested<A>(pos: number, f: () => A): A {
    if (++this.depth > MAX_DEPTH) {
      fail("TooDeep", pos, `Expression is nested too deeply ${at(pos)} (more than ${MAX_DEPTH} levels)`)
    }
    try {
      return f()
    } finally {
      this.depth--
    }
  }

  private expr(): Node {
    let left = this.term()
    for (let t = this.peek(); t._tag === "Op" && (t.op === "+" || t.op === "-"); t = this.peek()) {
      this.next()
      const right = this.term()
      left = { _tag: "Binary", op: t.op, opPos: t.pos, left, right, start: left.start, end: right.end }
    }
    return left
  }

  private term(): Node {
    let left = this.unary()
    for (let t = this.peek(); t._tag === "Op" && (t.op === "*" || t.op === "/" || t.op === "%"); t = this.peek()) {
      this.next()
      const right = this.unary()
      left = { _tag: "Binary", op: t.op, opPos: t.pos, left, right, start: left.start, end: right.end }
    }
    return left
  }

  private unary(): Node {
    const t = this.peek()
    if (t._tag === "Op" && (t.op === "-" || t.op === "+")) {
      this.next()
      const operand = this.nested(t.pos, () => this.unary())
      return t.op === "-" ? { _tag: "Neg", operand, start: t.pos, end: operand.end } : operand
    }
    return this.power()
  }

  private power(): Node {
    const base = this.primary()
    const t = this.peek()
    if (t._tag === "Op" && t.op === "^") {
      this.next()
      const exponent = this.nested(t.pos, () => this.unary())
      return { _tag: "Binary", op: "^", opPos: t.pos, left: base, right: exponent, start: base.start, end: exponent.end }
    }
    return base
  }

  private primary(): Node {
    const t = this.next()
    switch (t._tag) {
      case "Number":
        return { _tag: "Num", value: t.value, start: t.pos, end: t.pos + t.text.length }
      case "LParen": {
        const inner = this.nested(t.pos, () => this.expr())
        this.closeParen(t)
        return inner
      }
      case "Name":
        return this.peek()._tag === "LParen" ? this.call(t) : this.constant(t)
      default:
        return fail("Syntax", t.pos, `Unexpected ${describe(t)} ${at(t.pos)}`)
    }
  }

  private closeParen(open: Token): Token {
    const t = this.peek()
    if (t._tag !== "RParen") {
      fail("Syntax", t.pos, `Missing ")" ${at(t.pos)} to close "(" ${at(open.pos)} (found ${describe(t)})`)
    }
    return this.next()
  }

  private constant(t: Token & { readonly _tag: "Name" }): Node {
    const value = constants.get(t.name)
    if (value !== undefined) return { _tag: "Num", value, start: t.pos, end: t.pos + t.text.length }
    if (functions.has(t.name)) {
      return fail("Syntax", t.pos, `"${t.text}" ${at(t.pos)} is a function; call it like ${t.name}(x)`)
    }
    return fail("UnknownName", t.pos, `Unknown constant "${t.text}" ${at(t.pos)} (known constants: ${constantNames})`)
  }

  private call(t: Token & { readonly _tag: "Name" }): Node {
    const known = functions.get(t.name)
    if (known === undefined) {
      if (constants.has(t.name)) fail("Syntax", t.pos, `"${t.text}" ${at(t.pos)} is a constant, not a function`)
      return fail("UnknownName", t.pos, `Unknown function "${t.text}" ${at(t.pos)} (known functions: ${functionNames})`)
    }
    const open = this.next()
    const args = this.nested(open.pos, () => {
      const args: Array<Node> = []
      if (this.peek()._tag === "RParen") return args
      args.push(this.expr())
      while (this.peek()._tag === "Comma") {
        this.next()
        args.push(this.expr())
      }
      return args
    })
    const close = this.closeParen(open)
    const count = args.length
    if (count < known.minArgs || (known.maxArgs !== undefined && count > known.maxArgs)) {
      const expected = known.maxArgs === undefined
        ? `at least ${known.minArgs} argument${known.minArgs === 1 ? "" : "s"}`
        : `${known.maxArgs} argument${known.maxArgs === 1 ? "" : "s"}`
      fail("Arity", t.pos, `${t.name}() ${at(t.pos)} expects ${expected}, got ${count}`)
    }
    return { _tag: "Call", name: t.name, fn: known, args, start: t.pos, end: close.pos + 1 }
  }
}

// ---------------------------------------------------------------------------
// Evaluation

const snippet = (src: string, node: Node): string => {
  const text = src.slice(node.start, node.end)
  return text.length > 40 ? `${text.slice(0, 37)}...` : text
}

const evalNode = (src: string, node: Node): number => {
  let result: number
  switch (node._tag) {
    case "Num":
      return node.value
    case "Neg":
      return -evalNode(src, node.operand)
    case "Binary": {
      const l = evalNode(src, node.left)
      const r = evalNode(src, node.right)
      switch (node.op) {
        case "+":
          result = l + r
          break
        case "-":
          result = l - r
          break
        case "*":
          result = l * r
          break
        case "/":
          if (r === 0) fail("DivisionByZero", node.opPos, `Division by zero ${at(node.opPos)}`)
          result = l / r
          break
        case "%":
          if (r === 0) fail("DivisionByZero", node.opPos, `Modulo by zero ${at(node.opPos)}`)
          result = l % r
          break
        case "^":
          result = Math.pow(l, r)
          break
      }
      break
    }
    case "Call":
      result = node.fn.apply(node.args.map((arg) => evalNode(src, arg)))
      break
  }
  // Checked at every step so the message points at the sub-expression that went wrong.
  if (!Number.isFinite(result)) {
    const what = Number.isNaN(result) ? "not a real number" : "infinite or too large"
    fail("NonFinite", node.start, `Result of "${snippet(src, node)}" ${at(node.start)} is ${what}`)
  }
  return result
}

/** Evaluates an arithmetic expression. Pure: no eval, no globals. */
export const evaluate = (expression: string): Either.Either<number, CalculatorError> => {
  if (expression.length > MAX_EXPRESSION_LENGTH) {
    return Either.left(
      new CalculatorError({
        kind: "TooLong",
        message: `Expression is too long (${expression.length} characters; at most ${MAX_EXPRESSION_LENGTH})`,
        position: MAX_EXPRESSION_LENGTH
      })
    )
  }
  try {
    const tokens = tokenize(expression)
    if (tokens.length === 0) {
      return Either.left(new CalculatorError({ kind: "Syntax", message: "Empty expression", position: 0 }))
    }
    const end: Token = { _tag: "End", text: "", pos: expression.length }
    const value = evalNode(expression, new Parser(tokens, end).parse())
    // Normalise -0 so "-0" and "0 * -1" read as 0.
    return Either.right(value === 0 ? 0 : value)
  } catch (error) {
    if (error instanceof CalculatorError) return Either.left(error)
    throw error
  }
}

/**
 * Formats a result for people: integers exactly, other numbers to 15
 * significant digits so binary noise like 0.30000000000000004 reads as 0.3.
 */
export const formatNumber = (value: number): string =>
  Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(15)))

// ---------------------------------------------------------------------------
// The tool

const Parameters = Schema.Struct({
  expression: Schema.String.pipe(
    Schema.minLength(1),
    Schema.maxLength(MAX_EXPRESSION_LENGTH)
  ).annotations({
    // An explicit title replaces the filter's default one ("maxLength(1000)") in the JSON Schema.
    title: "Expression",
    description: "The arithmetic expression to evaluate, e.g. \"2 + 3 * 4\" or \"sqrt(2) ^ 2\""
  })
})

export const calculator = Tool.make({
  name: "calculator",
  description: "Evaluates an arithmetic expression exactly as written and returns \"<expression> = <result>\". " +
    "Supports numbers (1.5, .5, 1e-3), + - * / % and ^ or ** (right-associative; -2^2 = -4), parentheses, " +
    `the functions ${functionNames} (trigonometry in radians; log is natural) and the constants ${constantNames}.`,
  parameters: Parameters,
  execute: ({ expression }) =>
    Either.match(evaluate(expression), {
      onLeft: (error) => Effect.fail(new Tool.ToolError({ message: error.message })),
      onRight: (value) => Effect.succeed(`${expression.trim()} = ${formatNumber(value)}`)
    })
})
