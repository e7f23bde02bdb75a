/** Tests for the `get_weather` and `get_current_time` built-in tools and the BuiltinTools bundle. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Schema, TestClock } from "effect"
import { ToolError } from "../../src/tools/Tool.js"
import * as BuiltinTools from "../../src/tools/builtin/BuiltinTools.js"
import { getCurrentTime } from "../../src/tools/builtin/CurrentTime.js"
import { getWeather } from "../../src/tools/builtin/Weather.js"

/** Runs a tool the way the registry does: decode the raw arguments first (defaults apply), then execute. */
const runWeather = (args: unknown) =>
  Schema.decodeUnknown(getWeather.parameters)(args).pipe(Effect.orDie, Effect.flatMap(getWeather.execute))

/** get_current_time's result is structured: encoded with its success Schema to the JSON the model reads. */
const runTime = (args: unknown) =>
  Schema.decodeUnknown(getCurrentTime.parameters)(args).pipe(
    Effect.orDie,
    Effect.flatMap(getCurrentTime.execute),
    Effect.flatMap((result) => Schema.encode(Schema.parseJson(getCurrentTime.success))(result).pipe(Effect.orDie))
  )

const weatherLine =
  /^Sample data \(not a live forecast\): Weather in (.+): (-?\d+)°([CF]), ([a-z ]+), humidity (\d+)%, wind (\d+) km\/h$/

const parseWeather = (text: string) => {
  const match = weatherLine.exec(text)
  if (match === null) throw new Error(`unexpected weather text: ${text}`)
  const [, location = "", temperature = "", unit = "", condition = "", humidity = "", wind = ""] = match
  return {
    location,
    temperature: Number(temperature),
    unit,
    condition,
    humidity: Number(humidity),
    wind: Number(wind)
  }
}

const cities = [
  "San Francisco, CA",
  "Paris, France",
  "Tokyo",
  "London",
  "Berlin",
  "Cairo",
  "Sydney",
  "Reykjavik",
  "Lima",
  "Nairobi"
]

describe("get_weather", () => {
  it.effect("says plainly that it is sample data and names the location and unit", () =>
    Effect.gen(function*() {
      const text = yield* runWeather({ location: "San Francisco, CA" })
      expect(text.startsWith("Sample data (not a live forecast): ")).toBe(true)
      const weather = parseWeather(text)
      expect(weather.location).toBe("San Francisco, CA")
      expect(weather.unit).toBe("C")
    }))

  it.effect("is deterministic for a location, ignoring case and spacing", () =>
    Effect.gen(function*() {
      const a = parseWeather(yield* runWeather({ location: "San Francisco, CA" }))
      const b = parseWeather(yield* runWeather({ location: "  san   FRANCISCO, ca " }))
      const again = parseWeather(yield* runWeather({ location: "San Francisco, CA" }))
      expect(again).toEqual(a)
      // The name is echoed as written (trimmed), the weather is the same.
      expect(b.location).toBe("san FRANCISCO, ca")
      expect({ ...b, location: a.location }).toEqual(a)
    }))

  it.effect("differs across locations and stays within plausible ranges", () =>
    Effect.gen(function*() {
      const all = yield* Effect.forEach(cities, (location) => runWeather({ location }).pipe(Effect.map(parseWeather)))
      const distinct = new Set(all.map((w) => `${w.temperature}|${w.condition}|${w.humidity}|${w.wind}`))
      expect(distinct.size).toBeGreaterThanOrEqual(8)
      expect(new Set(all.map((w) => w.temperature)).size).toBeGreaterThan(3)
      for (const w of all) {
        expect(w.temperature).toBeGreaterThanOrEqual(-10)
        expect(w.temperature).toBeLessThanOrEqual(35)
        expect(w.humidity).toBeGreaterThanOrEqual(20)
        expect(w.humidity).toBeLessThanOrEqual(95)
        expect(w.wind).toBeGreaterThanOrEqual(0)
        expect(w.wind).toBeLessThanOrEqual(40)
      }
    }))

  it.effect("defaults to celsius and converts the same reading to fahrenheit", () =>
    Effect.gen(function*() {
      for (const location of cities) {
        const byDefault = parseWeather(yield* runWeather({ location }))
        const celsius = parseWeather(yield* runWeather({ location, unit: "celsius" }))
        const fahrenheit = parseWeather(yield* runWeather({ location, unit: "fahrenheit" }))
        expect(byDefault).toEqual(celsius)
        expect(fahrenheit.unit).toBe("F")
        expect(fahrenheit.temperature).toBe(Math.round(celsius.temperature * 9 / 5 + 32))
        expect({ ...fahrenheit, unit: "C", temperature: 0 }).toEqual({ ...celsius, temperature: 0 })
      }
    }))

  it("rejects invalid arguments", () => {
    const decode = Schema.decodeUnknownEither(getWeather.parameters)
    expect(decode({ location: "Paris" })).toEqual(Either.right({ location: "Paris", unit: "celsius" }))
    expect(Either.isLeft(decode({}))).toBe(true)
    expect(Either.isLeft(decode({ location: "" }))).toBe(true)
    expect(Either.isLeft(decode({ location: "   " }))).toBe(true)
    expect(Either.isLeft(decode({ location: 42 }))).toBe(true)
    expect(Either.isLeft(decode({ location: "Paris", unit: "kelvin" }))).toBe(true)
    expect(Either.isLeft(decode({ location: "x".repeat(201) }))).toBe(true)
  })
})

describe("get_current_time", () => {
  // Wednesday 2026-11-25 18:00:00 UTC
  const instant = Date.UTC(2026, 10, 25, 18, 0, 0)

  it.effect("defaults to UTC and reads the time from the Clock", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(instant)
      const result: unknown = JSON.parse(yield* runTime({}))
      expect(result).toEqual({
        timezone: "UTC",
        iso: "2026-11-25T18:00:00.000Z",
        local: "Wednesday, November 25, 2026 at 18:00:00 UTC",
        utc_offset: "+00:00"
      })
      yield* TestClock.adjust("90 minutes")
      const later: unknown = JSON.parse(yield* runTime({}))
      expect(later).toMatchObject({ iso: "2026-11-25T19:30:00.000Z" })
    }))

  it.effect("shows the local time in a named zone", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(instant)
      expect(JSON.parse(yield* runTime({ timezone: "Asia/Tokyo" }))).toEqual({
        timezone: "Asia/Tokyo",
        iso: "2026-11-25T18:00:00.000Z",
        local: "Thursday, November 26, 2026 at 03:00:00 GMT+9",
        utc_offset: "+09:00"
      })
      expect(JSON.parse(yield* runTime({ timezone: "Europe/Paris" }))).toEqual({
        timezone: "Europe/Paris",
        iso: "2026-11-25T18:00:00.000Z",
        local: "Wednesday, November 25, 2026 at 19:00:00 GMT+1",
        utc_offset: "+01:00"
      })
      expect(JSON.parse(yield* runTime({ timezone: "America/St_Johns" }))).toMatchObject({
        local: "Wednesday, November 25, 2026 at 14:30:00 GMT-3:30",
        utc_offset: "-03:30"
      })
      // Case is fixed to the canonical spelling.
      expect(JSON.parse(yield* runTime({ timezone: "asia/tokyo" }))).toMatchObject({ timezone: "Asia/Tokyo" })
    }))

  it.effect("its JSON has the fields in a fixed order, as the model has always read them", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(instant)
      expect(yield* runTime({ timezone: "Asia/Tokyo" })).toBe(
        "{\"timezone\":\"Asia/Tokyo\",\"iso\":\"2026-11-25T18:00:00.000Z\"," +
          "\"local\":\"Thursday, November 26, 2026 at 03:00:00 GMT+9\",\"utc_offset\":\"+09:00\"}"
      )
    }))

  it.effect("fails with a ToolError naming an unknown timezone", () =>
    Effect.gen(function*() {
      const failure = yield* Effect.flip(runTime({ timezone: "Mars/Olympus_Mons" }))
      expect(failure).toBeInstanceOf(ToolError)
      expect(failure.message).toContain("Unknown timezone \"Mars/Olympus_Mons\"")
    }))

  it("rejects invalid arguments", () => {
    const decode = Schema.decodeUnknownEither(getCurrentTime.parameters)
    expect(decode({})).toEqual(Either.right({ timezone: "UTC" }))
    expect(Either.isLeft(decode({ timezone: "" }))).toBe(true)
    expect(Either.isLeft(decode({ timezone: 3 }))).toBe(true)
  })
})

describe("BuiltinTools", () => {
  it("lists the three tools under distinct names", () => {
    expect(BuiltinTools.tools.map((tool) => tool.name)).toEqual(["calculator", "get_weather", "get_current_time"])
    for (const tool of BuiltinTools.tools) expect(tool.description.length).toBeGreaterThan(20)
  })
})
