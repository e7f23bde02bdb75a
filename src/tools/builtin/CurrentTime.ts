/** The built-in `get_current_time` tool: the current time in an IANA time zone, read from Effect's Clock, as a structured (JSON) result. */
import { Clock, Effect, Schema } from "effect"
import * as Tool from "../Tool.js"

const Parameters = Schema.Struct({
  timezone: Schema.optionalWith(
    Schema.String.pipe(Schema.minLength(1), Schema.maxLength(100)).annotations({
      title: "Time zone",
      description: "IANA time zone name such as \"Europe/Paris\" or \"America/New_York\" (default \"UTC\")"
    }),
    { default: () => "UTC" }
  )
})

/** The tool's result, encoded to JSON for the model. */
export const CurrentTime = Schema.Struct({
  /** The canonical zone name, e.g. "Asia/Tokyo" for "asia/tokyo". */
  timezone: Schema.String,
  /** The instant in UTC, ISO 8601. */
  iso: Schema.String,
  /** The wall-clock time in the zone, in English, 24-hour. */
  local: Schema.String,
  /** The zone's offset from UTC at that instant, "+09:00" style. */
  utc_offset: Schema.String
})
export type CurrentTime = typeof CurrentTime.Type

/** "GMT", "GMT+9", "GMT+05:30" or "GMT-03:00" (as Intl writes "longOffset") to "+HH:MM". */
const toUtcOffset = (gmt: string): string => {
  const match = /^GMT([+-])(\d{1,2})(?::?(\d{2}))?$/.exec(gmt)
  if (match === null) return "+00:00"
  const [, sign = "+", hours = "0", minutes = "00"] = match
  return `${sign}${hours.padStart(2, "0")}:${minutes}`
}

/**
 * Describes an instant in a zone. Throws RangeError for an unknown zone,
 * as Intl does.
 */
export const describeTime = (millis: number, timeZone: string): CurrentTime => {
  const date = new Date(millis)
  const local = new Intl.DateTimeFormat("en-US", {
    timeZone,
    dateStyle: "full",
    timeStyle: "long",
    // 24-hour so the text has no locale-specific AM/PM spacing characters.
    hourCycle: "h23"
  })
  const offsetPart = new Intl.DateTimeFormat("en-US", { timeZone, timeZoneName: "longOffset" })
    .formatToParts(date)
    .find((part) => part.type === "timeZoneName")
  // Prefer ICU's spelling only when it is a case fix: ICU maps some current names to
  // legacy ones (Asia/Kolkata -> Asia/Calcutta), which would confuse the reader.
  const resolved = local.resolvedOptions().timeZone
  return {
    timezone: resolved.toLowerCase() === timeZone.toLowerCase() ? resolved : timeZone,
    iso: date.toISOString(),
    local: local.format(date),
    utc_offset: toUtcOffset(offsetPart?.value ?? "GMT")
  }
}

export const getCurrentTime = Tool.make({
  name: "get_current_time",
  description: "Returns the current date and time in an IANA time zone (default UTC) as JSON: " +
    "{\"timezone\", \"iso\" (the UTC instant, ISO 8601), \"local\" (readable wall-clock time in the zone), " +
    "\"utc_offset\" (e.g. \"+09:00\")}.",
  parameters: Parameters,
  success: CurrentTime,
  execute: ({ timezone }) =>
    Effect.flatMap(Clock.currentTimeMillis, (millis) =>
      Effect.try({
        try: () => describeTime(millis, timezone.trim()),
        catch: (error) =>
          new Tool.ToolError({
            message: error instanceof RangeError
              ? `Unknown timezone "${timezone}"; use an IANA name such as "Europe/Paris" or "UTC"`
              : `Could not format the time for timezone "${timezone}": ${String(error)}`
          })
      }))
})
