/** The built-in `get_weather` tool: deterministic SAMPLE weather for demos and tests, not a live forecast. */
import { Effect, Schema } from "effect"
import { fnv1a } from "../../util/Hash.js"
import { mulberry32 } from "../../util/Prng.js"
import * as Tool from "../Tool.js"

export const Unit = Schema.Literal("celsius", "fahrenheit")
export type Unit = typeof Unit.Type

const Parameters = Schema.Struct({
  location: Schema.String.pipe(
    Schema.minLength(1),
    Schema.maxLength(200),
    // Rejects blank strings such as "   ", which would otherwise all share one "location".
    Schema.pattern(/\S/, { message: () => "location must not be blank" })
  ).annotations({ title: "Location", description: "City and region or country, e.g. \"San Francisco, CA\" or \"Paris, France\"" }),
  unit: Schema.optionalWith(
    Unit.annotations({ description: "Temperature unit (default celsius)" }),
    { default: () => "celsius" as const }
  )
})

const conditions = [
  "sunny",
  "clear",
  "partly cloudy",
  "cloudy",
  "overcast",
  "light rain",
  "rain showers",
  "thunderstorms",
  "foggy",
  "windy",
  "light snow"
] as const

/** The key a location is known by: case and spacing do not make a different place. */
export const normalizeLocation = (location: string): string => location.trim().replace(/\s+/g, " ").toLowerCase()

export interface SampleWeather {
  readonly celsius: number
  readonly condition: string
  readonly humidity: number
  readonly windKmh: number
}

/** The sample weather for a location: the same location always gets the same weather. */
export const sampleWeather = (location: string): SampleWeather => {
  const next = mulberry32(fnv1a(normalizeLocation(location)))
  const between = (low: number, high: number) => low + Math.floor(next() * (high - low + 1))
  return {
    celsius: between(-10, 35),
    condition: conditions[between(0, conditions.length - 1)] ?? "clear",
    humidity: between(20, 95),
    windKmh: between(0, 40)
  }
}

export const celsiusToFahrenheit = (celsius: number): number => Math.round(celsius * 9 / 5 + 32)

export const getWeather = Tool.make({
  name: "get_weather",
  description: "Returns SAMPLE weather for a location (deterministic demo data, not a live forecast): " +
    "temperature, conditions, humidity and wind.",
  parameters: Parameters,
  execute: ({ location, unit }) =>
    Effect.sync(() => {
      const name = location.trim().replace(/\s+/g, " ")
      const weather = sampleWeather(name)
      const temperature = unit === "fahrenheit" ? `${celsiusToFahrenheit(weather.celsius)}°F` : `${weather.celsius}°C`
      return `Sample data (not a live forecast): Weather in ${name}: ${temperature}, ${weather.condition}, ` +
        `humidity ${weather.humidity}%, wind ${weather.windKmh} km/h`
    })
})
