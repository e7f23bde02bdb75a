/**
 * Reads Prometheus' text exposition format, enough for tests: each sample
 * line as a name, its labels and its value.
 */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

export const parse = (text: string): ReadonlyArray<Sample> =>
  text.split("\n").flatMap((line) => {
    const match = LINE.exec(line)
    if (match === null || line.startsWith("#")) return []
    const labels: Record<string, string> = {}
    for (const [, name, value] of (match[2] ?? "").matchAll(LABEL)) {
      if (name !== undefined && value !== undefined) labels[name] = value.replace(/\\(.)/g, "$1")
    }
    return [{ name: match[1] ?? "", labels, value: Number(match[3]) }]
  })

/** The sum of the samples named `name` whose labels include `labels` (0 when there are none). */
export const sum = (samples: ReadonlyArray<Sample>, name: string, labels: Readonly<Record<string, string>> = {}): number =>
  samples
    .filter((sample) => sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value))
    .reduce((total, sample) => total + sample.value, 0)

/** The distinct values of one label among the samples named `name`. */
export const labelValues = (samples: ReadonlyArray<Sample>, name: string, label: string): ReadonlyArray<string> => [
  ...new Set(samples.filter((sample) => sample.name === name).flatMap((sample) => sample.labels[label] ?? []))
]
