/**
 * The data model of protocol.md section 2 ("Values"): what any value in an
 * envelope may be, in both codecs and every language.
 *
 * null, booleans, strings without lone surrogates, finite numbers (integers
 * within +-(2^53-1)), arrays and plain objects with string keys; no deeper
 * than `maxDepth` levels (the envelope is level 1, `data` level 2) and no
 * more than `maxValues` values in one envelope (each array, object and
 * scalar counts once; keys do not).
 */
import { hasLoneSurrogate, UnsafeInteger } from "./json.js";

export const MAX_DEPTH = 64;
export const MAX_VALUES = 131072;

export interface DataLimits {
  readonly maxDepth: number;
  readonly maxValues: number;
}

export const DEFAULT_LIMITS: DataLimits = { maxDepth: MAX_DEPTH, maxValues: MAX_VALUES };

/** A value outside the model; `path` names where (`data.items[3]`). */
export class DataModelError extends Error {
  override readonly name = "DataModelError";
  constructor(
    readonly path: string,
    readonly problem: string,
  ) {
    super(`${path}: ${problem}`);
  }
}

type Segment = string | number;

function render(root: string, segments: readonly Segment[]): string {
  let out = root;
  for (const segment of segments) {
    if (typeof segment === "number") out += `[${segment}]`;
    else out += `.${segment.length <= 32 ? segment : segment.slice(0, 29) + "..."}`;
  }
  return out;
}

function describe(value: unknown): string {
  if (value === undefined) return "undefined (use null)";
  if (typeof value === "bigint") return "bigint";
  if (typeof value === "function") return "function";
  if (typeof value === "symbol") return "symbol";
  const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === "string" && name !== "" ? name : "object";
}

/**
 * Check `value` (at `level`, 2 for `data`) and return how many values it holds.
 *
 * `fromWire`: the value came from a decoder, where a number written as a
 * float may be integral and large (`1e300`); for outgoing data a JavaScript
 * client cannot tell `3` from `3.0`, so every integral number must be safe.
 */
export function checkValue(
  value: unknown,
  limits: DataLimits = DEFAULT_LIMITS,
  options: { root?: string; level?: number; budget?: number; fromWire?: boolean } = {},
): number {
  const root = options.root ?? "data";
  const allowed = options.budget ?? limits.maxValues;
  const fromWire = options.fromWire ?? false;
  const maxDepth = limits.maxDepth;
  const path: Segment[] = [];
  let count = 0;

  const refuse = (problem: string): never => {
    throw new DataModelError(render(root, path), problem);
  };

  const visit = (item: unknown, level: number): void => {
    count++;
    if (count > allowed) refuse("too many values in one message");
    switch (typeof item) {
      case "string":
        if (hasLoneSurrogate(item)) refuse("string holds a lone surrogate");
        return;
      case "boolean":
        return;
      case "number":
        if (!Number.isFinite(item)) refuse("number is not finite");
        if (!fromWire && Number.isInteger(item) && !Number.isSafeInteger(item)) {
          refuse("integer outside +-(2^53-1)");
        }
        return;
      case "object":
        break;
      default:
        refuse(`${describe(item)} is not in the data model`);
    }
    if (item === null) return;
    if (item instanceof UnsafeInteger) refuse("integer outside +-(2^53-1)");
    if (Array.isArray(item)) {
      if (level >= maxDepth && item.length > 0) refuse(`nested deeper than ${maxDepth} levels`);
      for (let index = 0; index < item.length; index++) {
        path.push(index);
        const member: unknown = item[index];
        if (member === undefined) refuse(`${describe(member)} is not in the data model`);
        visit(member, level + 1);
        path.pop();
      }
      return;
    }
    const proto: unknown = Object.getPrototypeOf(item);
    if (proto !== Object.prototype && proto !== null) {
      refuse(`${describe(item)} is not in the data model (plain objects only)`);
    }
    const keys = Object.keys(item as object);
    if (level >= maxDepth && keys.length > 0) refuse(`nested deeper than ${maxDepth} levels`);
    for (const key of keys) {
      const member = (item as Record<string, unknown>)[key];
      if (member === undefined) continue; // absent, as JSON.stringify treats it
      path.push(key);
      if (hasLoneSurrogate(key)) refuse("object key holds a lone surrogate");
      visit(member, level + 1);
      path.pop();
    }
  };

  visit(value, options.level ?? 2);
  return count;
}
