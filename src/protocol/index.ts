/**
 * The protocol alone, as `aibase/protocol`: the RpcGroup, its Schemas, the
 * error classes and the /ws frame types, without the server. Clients import
 * this (it loads in a browser, too).
 */
export * from "./Chat.js"
export * from "./Embedding.js"
export * from "./Errors.js"
export * from "./Frames.js"
export * from "./Rpcs.js"
export * from "./Tools.js"
