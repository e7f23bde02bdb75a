/** Tests for the calculator's parser/evaluator and for the `calculator` tool itself. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, FastCheck as fc, Schema } from "effect"
import { ToolError } from "../../src/tools/Tool.js"
import {
  calculator,
  type CalculatorError,
  type CalculatorErrorKind,
  evaluate,
  formatNumber,
  MAX_DEPTH,
  MAX_EXPRESSION_LENGTH
} from "../../src/tools/builtin/Calculator.js"

const value = (expression: string): number => {
  const result = evaluate(expression)
  if (Either.isLeft(result)) throw new Error(`expected a value for ${expression}, got: ${result.left.message}`)
  return result.right
}

const error = (expression: string): CalculatorError => {
  const result = evaluate(expression)
  if (Either.isRight(result)) throw new Error(`expected an error for ${expression}, got ${result.right}`)
  return result.left
}

const expectError = (expression: string, kind: CalculatorErrorKind, position: number, message: string | RegExp) => {
  const e = error(expression)
  expect(e.kind).toBe(kind)
  expect(e.position).toBe(position)
  if (typeof message === "string") expect(e.message).toContain(message)
  else expect(e.message).toMatch(message)
}

describe("evaluate", () => {
  it("respects precedence", () => {
    expect(value("2 + 3 * 4")).toBe(14)
    expect(value("(2 + 3) * 4")).toBe(20)
    expect(value("10 - 4 / 2")).toBe(8)
    expect(value("2 * 3 ^ 2")).toBe(18)
    expect(value("7 % 4 + 1")).toBe(4)
    expect(value("1 + 7 % 4 * 2")).toBe(7)
  })

  it("is left-associative for + - * / %", () => {
    expect(value("10 - 3 - 2")).toBe(5)
    expect(value("100 / 10 / 5")).toBe(2)
    expect(value("2 * 3 / 4")).toBe(1.5)
    expect(value("100 % 7 % 3")).toBe(2)
  })

  it("is right-associative for powers, with ^ and **", () => {
    expect(value("2^3^2")).toBe(512)
    expect(value("2 ** 3 ** 2")).toBe(512)
    expect(value("(2^3)^2")).toBe(64)
    expect(value("2 ^ 10")).toBe(1024)
    expect(value("4 ^ 0.5")).toBe(2)
  })

  it("handles unary minus and plus the mathematical way", () => {
    expect(value("-2^2")).toBe(-4)
    expect(value("(-2)^2")).toBe(4)
    expect(value("2^-1")).toBe(0.5)
    expect(value("-3 * -2")).toBe(6)
    expect(value("--3")).toBe(3)
    expect(value("2 - -3")).toBe(5)
    expect(value("+4 - +1")).toBe(3)
    expect(value("-(1 + 2)")).toBe(-3)
    expect(Object.is(value("-0"), 0)).toBe(true)
  })

  it("reads decimals and exponents", () => {
    expect(value(".5 + .25")).toBe(0.75)
    expect(value("2. * 3")).toBe(6)
    expect(value("1.5e2")).toBe(150)
    expect(value("1e-3")).toBe(0.001)
    expect(value("2E+2")).toBe(200)
    expect(value("  1.25  ")).toBe(1.25)
  })

  it("knows every function", () => {
    expect(value("sqrt(16)")).toBe(4)
    expect(value("abs(-3.5)")).toBe(3.5)
    expect(value("min(3)")).toBe(3)
    expect(value("min(4, -2, 7)")).toBe(-2)
    expect(value("max(4, -2, 7)")).toBe(7)
    expect(value("round(2.5)")).toBe(3)
    expect(value("round(2.4)")).toBe(2)
    expect(value("floor(-1.5)")).toBe(-2)
    expect(value("ceil(1.2)")).toBe(2)
    expect(value("log(e^3)")).toBeCloseTo(3, 12)
    expect(value("ln(1)")).toBe(0)
    expect(value("log10(1000)")).toBe(3)
    expect(value("log2(8)")).toBe(3)
    expect(value("exp(0)")).toBe(1)
    expect(value("sin(pi / 2)")).toBe(1)
    expect(value("cos(0)")).toBe(1)
    expect(value("tan(pi / 4)")).toBeCloseTo(1, 12)
    expect(value("SQRT(9) + Max(1, 2)")).toBe(5)
    expect(value("sqrt(max(2, 8) * 2) + abs(min(-1, 0))")).toBe(5)
  })

  it("knows the constants", () => {
    expect(value("pi")).toBe(Math.PI)
    expect(value("e")).toBe(Math.E)
    expect(value("2 * PI")).toBe(2 * Math.PI)
  })

  it("reports division and modulo by zero at the operator", () => {
    expectError("1 / 0", "DivisionByZero", 2, "Division by zero at position 2")
    expectError("0/0", "DivisionByZero", 1, "Division by zero at position 1")
    expectError("5 % (2 - 2)", "DivisionByZero", 2, "Modulo by zero at position 2")
  })

  it("reports non-finite results and quotes the sub-expression", () => {
    expectError("1 + sqrt(-1)", "NonFinite", 4, "Result of \"sqrt(-1)\" at position 4 is not a real number")
    expectError("10^400", "NonFinite", 0, "Result of \"10^400\" at position 0 is infinite")
    expectError("1e308 * 10", "NonFinite", 0, "Result of \"1e308 * 10\" at position 0 is infinite")
    expectError("log(0)", "NonFinite", 0, "Result of \"log(0)\" at position 0 is infinite")
    expectError("2 * 1e400", "NonFinite", 4, "Number \"1e400\" at position 4 is too large")
  })

  it("reports unknown names", () => {
    expectError("foo(1)", "UnknownName", 0, "Unknown function \"foo\" at position 0")
    expectError("2 * bar(1)", "UnknownName", 4, "Unknown function \"bar\" at position 4")
    expectError("x + 1", "UnknownName", 0, "Unknown constant \"x\" at position 0")
    expectError("sqrt + 1", "Syntax", 0, "\"sqrt\" at position 0 is a function")
    expectError("1 + pi(2)", "Syntax", 4, "\"pi\" at position 4 is a constant, not a function")
  })

  it("reports wrong arity", () => {
    expectError("sqrt(1, 2)", "Arity", 0, "sqrt() at position 0 expects 1 argument, got 2")
    expectError("1 + round()", "Arity", 4, "round() at position 4 expects 1 argument, got 0")
    expectError("min()", "Arity", 0, "min() at position 0 expects at least 1 argument, got 0")
    expectError("max()", "Arity", 0, "expects at least 1 argument")
  })

  it("reports malformed input with the position of the problem", () => {
    expectError("(1 + 2))", "Syntax", 7, "Unexpected \")\" at position 7")
    expectError("1 +", "Syntax", 3, "Unexpected end of input at position 3")
    expectError("(1 + 2", "Syntax", 6, "Missing \")\" at position 6 to close \"(\" at position 0")
    expectError("max(1, 2", "Syntax", 8, "Missing \")\" at position 8 to close \"(\" at position 3")
    expectError("1 2", "Syntax", 2, "Unexpected \"2\" at position 2 after a complete expression")
    expectError("2 * * 3", "Syntax", 4, "Unexpected \"*\" at position 4")
    expectError("()", "Syntax", 1, "Unexpected \")\" at position 1")
    expectError("1 + $", "Syntax", 4, "Unexpected character \"$\" at position 4")
    expectError("2e + 1", "Syntax", 0, "Malformed number \"2e\" at position 0")
    expectError("max(1,)", "Syntax", 6, "Unexpected \")\" at position 6")
    expectError("", "Syntax", 0, "Empty expression")
    expectError("   ", "Syntax", 0, "Empty expression")
  })

  it("bounds the length", () => {
    const longest = "1+".repeat(MAX_EXPRESSION_LENGTH / 2 - 1) + "10"
    expect(longest.length).toBe(MAX_EXPRESSION_LENGTH)
    expect(value(longest)).toBe(MAX_EXPRESSION_LENGTH / 2 - 1 + 10)
    expectError(longest + "+1", "TooLong", MAX_EXPRESSION_LENGTH, "too long")
  })

  it("bounds the nesting depth", () => {
    const parens = (n: number) => "(".repeat(n) + "1" + ")".repeat(n)
    expect(value(parens(MAX_DEPTH))).toBe(1)
    expectError(parens(MAX_DEPTH + 1), "TooDeep", MAX_DEPTH, `nested too deeply at position ${MAX_DEPTH}`)
    expect(value("-".repeat(MAX_DEPTH) + "1")).toBe(1)
    expectError("-".repeat(MAX_DEPTH + 1) + "1", "TooDeep", MAX_DEPTH, "nested too deeply")
    const calls = (n: number) => "abs(".repeat(n) + "1" + ")".repeat(n)
    expect(value(calls(MAX_DEPTH))).toBe(1)
    expectError(calls(MAX_DEPTH + 1), "TooDeep", 4 * MAX_DEPTH + 3, "nested too deeply")
    const powers = (n: number) => Array.from({ length: n + 1 }, () => "1").join("^")
    expect(value(powers(MAX_DEPTH))).toBe(1)
    expectError(powers(MAX_DEPTH + 1), "TooDeep", 2 * MAX_DEPTH + 1, "nested too deeply")
  })
})

describe("formatNumber", () => {
  it("keeps integers exact and trims binary noise", () => {
    expect(formatNumber(14)).toBe("14")
    expect(formatNumber(2 ** 53)).toBe("9007199254740992")
    expect(formatNumber(-7)).toBe("-7")
    expect(formatNumber(0.1 + 0.2)).toBe("0.3")
    expect(formatNumber(1 / 3)).toBe("0.333333333333333")
    expect(formatNumber(1.5e-7)).toBe("1.5e-7")
  })
})

// A reference for the property test: the tree is evaluated directly, the
// calculator sees it only as text.
type Tree =
  | { readonly _tag: "Num"; readonly value: number; readonly paren: boolean }
  | { readonly _tag: "Neg"; readonly operand: Tree; readonly paren: boolean }
  | { readonly _tag: "Bin"; readonly op: "+" | "-" | "*" | "/"; readonly left: Tree; readonly right: Tree; readonly paren: boolean }
  | { readonly _tag: "Pow"; readonly base: Tree; readonly exponent: number; readonly paren: boolean }

const precedence = (tree: Tree): number => {
  switch (tree._tag) {
    case "Num":
      return 5
    case "Pow":
      return 4
    case "Neg":
      return 3
    case "Bin":
      return tree.op === "+" || tree.op === "-" ? 1 : 2
  }
}

/** Prints with as few parentheses as the grammar needs, plus the ones the tree asks for. */
const print = (tree: Tree): string => {
  const wrap = (sub: Tree, minimum: number) => precedence(sub) >= minimum ? print(sub) : `(${print(sub)})`
  let text: string
  switch (tree._tag) {
    case "Num":
      text = String(tree.value)
      break
    case "Neg":
      text = `-${wrap(tree.operand, 3)}`
      break
    case "Bin": {
      const p = precedence(tree)
      text = `${wrap(tree.left, p)} ${tree.op} ${wrap(tree.right, p + 1)}`
      break
    }
    case "Pow":
      text = `${wrap(tree.base, 5)}^${tree.exponent}`
      break
  }
  return tree.paren ? `(${text})` : text
}

/** undefined when some step divides by zero or is not finite (the calculator must then fail). */
const reference = (tree: Tree): number | undefined => {
  const finite = (n: number) => Number.isFinite(n) ? n : undefined
  switch (tree._tag) {
    case "Num":
      return tree.value
    case "Neg": {
      const v = reference(tree.operand)
      return v === undefined ? undefined : -v
    }
    case "Pow": {
      const b = reference(tree.base)
      return b === undefined ? undefined : finite(Math.pow(b, tree.exponent))
    }
    case "Bin": {
      const l = reference(tree.left)
      const r = reference(tree.right)
      if (l === undefined || r === undefined) return undefined
      switch (tree.op) {
        case "+":
          return finite(l + r)
        case "-":
          return finite(l - r)
        case "*":
          return finite(l * r)
        case "/":
          return r === 0 ? undefined : finite(l / r)
      }
    }
  }
}

const { tree: treeArbitrary } = fc.letrec<{ tree: Tree }>((self) => ({
  tree: fc.oneof(
    { maxDepth: 6, depthSize: "small", withCrossShrink: true },
    fc.record({
      _tag: fc.constant("Num" as const),
      // Integers and short decimals such as 2.5 or 0.25.
      value: fc.oneof(fc.integer({ min: 0, max: 100 }), fc.integer({ min: 0, max: 400 }).map((n) => n / 4)),
      paren: fc.boolean()
    }),
    fc.record({ _tag: fc.constant("Neg" as const), operand: self("tree"), paren: fc.boolean() }),
    fc.record({
      _tag: fc.constant("Bin" as const),
      op: fc.constantFrom("+" as const, "-" as const, "*" as const, "/" as const),
      left: self("tree"),
      right: self("tree"),
      paren: fc.boolean()
    }),
    fc.record({
      _tag: fc.constant("Pow" as const),
      base: self("tree"),
      exponent: fc.integer({ min: 0, max: 3 }),
      paren: fc.boolean()
    })
  )
}))

describe("evaluate (property)", () => {
  it.prop("agrees with a direct evaluation of random expression trees", [treeArbitrary], ([tree]) => {
    const text = print(tree)
    const expected = reference(tree)
    const actual = evaluate(text)
    if (expected === undefined) {
      // Division by zero or overflow somewhere: the calculator must say so, not return a number.
      expect(Either.isLeft(actual), text).toBe(true)
      return
    }
    if (Either.isLeft(actual)) throw new Error(`${text}: ${actual.left.message}`)
    const tolerance = 1e-9 * Math.max(1, Math.abs(expected))
    expect(Math.abs(actual.right - expected), text).toBeLessThanOrEqual(tolerance)
  }, { fastCheck: { numRuns: 500 } })
})

describe("calculator tool", () => {
  it.effect("returns the expression and its result", () =>
    Effect.gen(function*() {
      expect(yield* calculator.execute({ expression: "2 + 3 * 4" })).toBe("2 + 3 * 4 = 14")
      expect(yield* calculator.execute({ expression: "  0.1 + 0.2 " })).toBe("0.1 + 0.2 = 0.3")
      expect(yield* calculator.execute({ expression: "2^3^2" })).toBe("2^3^2 = 512")
    }))

  it.effect("turns evaluation errors into a ToolError with the position", () =>
    Effect.gen(function*() {
      const failure = yield* Effect.flip(calculator.execute({ expression: "1 / 0" }))
      expect(failure).toBeInstanceOf(ToolError)
      expect(failure.message).toBe("Division by zero at position 2")
    }))

  it("bounds the expression length in its parameter Schema", () => {
    const decode = Schema.decodeUnknownEither(calculator.parameters)
    expect(Either.isRight(decode({ expression: "1".repeat(MAX_EXPRESSION_LENGTH) }))).toBe(true)
    expect(Either.isLeft(decode({ expression: "1".repeat(MAX_EXPRESSION_LENGTH + 1) }))).toBe(true)
    expect(Either.isLeft(decode({ expression: "" }))).toBe(true)
    expect(Either.isLeft(decode({}))).toBe(true)
  })
})
