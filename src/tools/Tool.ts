/**
 * Tools as an application defines them: `make`, `ToolError`, `definition`
 * (from ToolCore) and `toLayer`, which registers a tool through
 * `ToolRegistry.layerTool`. ToolRegistry never imports this module, so
 * there is no import cycle between the two.
 */
import type { Layer } from "effect"
import { ToolRegistry } from "./ToolRegistry.js"
import type { Tool } from "./ToolCore.js"

export { definition, make, type StructuredTool, type TextTool, type Tool, ToolError } from "./ToolCore.js"

/**
 * A Layer that adds a tool to the ToolRegistry for as long as the Layer
 * lives: the same as `ToolRegistry.layerTool`.
 */
export const toLayer = <A, I, R, S, SI>(tool: Tool<A, I, R, S, SI>): Layer.Layer<never, never, ToolRegistry | R> =>
  ToolRegistry.layerTool(tool)
