/**
 * FNV-1a, 32 bit: a tiny string hash, stable across runs and platforms. Not
 * for secrets: for output that must be the same for the same text (the
 * offline model's vectors, the sample weather of a place).
 */

/** The FNV-1a offset basis, the default seed. */
export const FNV_OFFSET_BASIS = 0x811c9dc5

/** The 32-bit FNV-1a hash of a text's UTF-16 code units, as an unsigned integer; another seed gives an independent hash. */
export const fnv1a = (text: string, seed: number = FNV_OFFSET_BASIS): number => {
  let hash = seed >>> 0
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193)
  }
  return hash >>> 0
}
