/** The tools AIBase ships with, as one Layer that registers them all in the ToolRegistry. */
import { Layer } from "effect"
import { ToolRegistry } from "../ToolRegistry.js"
import { calculator } from "./Calculator.js"
import { getCurrentTime } from "./CurrentTime.js"
import { getWeather } from "./Weather.js"

export const tools = [calculator, getWeather, getCurrentTime] as const

/** Registers the built-in tools for as long as the Layer lives. */
export const layer: Layer.Layer<never, never, ToolRegistry> = Layer.mergeAll(
  ToolRegistry.layerTool(calculator),
  ToolRegistry.layerTool(getWeather),
  ToolRegistry.layerTool(getCurrentTime)
)
