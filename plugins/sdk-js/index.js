//! Guest SDK for downsync rule plugins (`downsync:rules@0.2.0`) written in JavaScript.
//
// A rule is an object with `describe()` and any of `transform`, `preserve`, `ignorePaths`;
// `exportRule(rule)` turns it into the `rules` export jco expects:
//
//   import { Info, apply, exportRule, pointer } from "downsync-rules";
//   export const rules = exportRule({
//     describe: () => new Info("keep", "0.2.0").kind("", "Service").scope("/spec/clusterIP")
//       .hooks("preserve").reads("/spec"),
//     preserve(existing, desired, intent) {
//       pointer.copyIfAbsent(existing, desired, "/spec/clusterIP");
//       return apply(desired);
//     },
//   });
//
// Objects are plain JSON values (parsed from the text the host sends, serialised back).
// Decisions are the WIT variant as jco represents it, `{tag, val}`: `apply(obj)`,
// `recreate(reason)`, `skip(reason)`. A hook fails by throwing a string (or a `RuleError`);
// jco turns a thrown value into the `string` of the WIT `result`, which the host reports as a
// rejection. Any other exception is caught here and reported the same way, with its message,
// so that a bug is an error the host can name rather than a trap.
//
// Build with the pinned jco and flags (package.json "downsync"; see
// docs/plugins-other-languages.md):
//
//   jco componentize app.js --wit wit -n rule --backend qjs --backend-qjs-disable-async --bundle -o rule.wasm

export const HOOKS = ["transform", "preserve", "ignore-paths"];

/** Thrown by a hook to refuse an object; the message is what the host reports. */
export class RuleError extends Error {}

/** Write this object. */
export const apply = (obj) => ({ tag: "apply", val: obj });
/** Delete and recreate the downstream object, for this reason. */
export const recreate = (reason) => ({ tag: "recreate", val: String(reason) });
/** Leave the downstream object alone, for this reason. */
export const skip = (reason) => ({ tag: "skip", val: String(reason) });

/** What a plugin says about itself; builder calls mirror the Rust SDK's `Info`. */
export class Info {
  constructor(name, version) {
    this.name = name;
    this.version = version;
    this.kinds = [];
    this.scopes = [];
    this.hookNames = [...HOOKS];
    this.readPaths = [];
  }
  /** Adds a handled group/kind pattern (`*` matches anything; the core group is ""). */
  kind(group, kind) {
    this.kinds.push({ group, kind });
    return this;
  }
  /** Adds a JSON pointer the plugin may write (`*` matches one segment). */
  scope(ptr) {
    this.scopes.push(ptr);
    return this;
  }
  /** The hooks the rule implements ("transform", "preserve", "ignore-paths"). */
  hooks(...names) {
    for (const n of names) {
      if (!HOOKS.includes(n)) throw new RuleError(`unknown hook ${n}: expected one of ${HOOKS.join(", ")}`);
    }
    this.hookNames = names;
    return this;
  }
  /**
   * Declares the rule stateless: nothing kept between calls (module variables, caches) changes
   * what a later call returns. The host may then run it in a reused instance when the operator
   * configures `instances: reused`. Said in the version's build metadata: `0.2.0+stateless`.
   */
  stateless() {
    this.version += this.version.includes("+") ? ".stateless" : "+stateless";
    return this;
  }
  /** Adds a part of the object the rule reads; the hooks then get only those parts. */
  reads(ptr) {
    this.readPaths.push(ptr);
    return this;
  }
}

/** What the user asked for upstream: which fields a client set, which the server filled in. */
export class Intent {
  constructor(known, serverSet) {
    this.known = known;
    this.serverSet = serverSet;
  }
  static from(raw) {
    return raw && raw.tag === "server-set" ? new Intent(true, [...raw.val]) : new Intent(false, []);
  }
  /** Whether the host could tell requested fields from server-set ones. */
  isKnown() {
    return this.known;
  }
  /** Whether a client asked for the field at `ptr`; false when the intent is unknown. */
  requested(ptr) {
    return this.known && !this.isServerSet(ptr);
  }
  /** Whether the field at `ptr` (or an ancestor) was filled in by the upstream server. */
  isServerSet(ptr) {
    return this.serverSet.some((p) => ptr === p || ptr.startsWith(p + "/"));
  }
}

const MISSING = Symbol("missing");

function segments(ptr) {
  if (ptr === "") return [];
  if (!ptr.startsWith("/")) return null;
  return ptr.slice(1).split("/").map((s) => s.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function step(cur, seg) {
  if (Array.isArray(cur)) {
    if (!/^\d+$/.test(seg)) return MISSING;
    const i = Number(seg);
    return i < cur.length ? cur[i] : MISSING;
  }
  if (cur !== null && typeof cur === "object") return Object.hasOwn(cur, seg) ? cur[seg] : MISSING;
  return MISSING;
}

/** JSON pointer (RFC 6901) helpers over parsed JSON values. */
export const pointer = {
  /** The value at `ptr`, or `undefined`. */
  get(value, ptr) {
    const segs = segments(ptr);
    if (segs === null) return undefined;
    let cur = value;
    for (const s of segs) {
      cur = step(cur, s);
      if (cur === MISSING) return undefined;
    }
    return cur;
  },
  /** Sets the value at `ptr`, creating missing objects; false through a scalar or a missing index. */
  set(value, ptr, v) {
    const segs = segments(ptr);
    if (!segs || segs.length === 0) return false;
    let cur = value;
    for (const s of segs.slice(0, -1)) {
      let next = step(cur, s);
      if (next === MISSING || next === null) {
        if (cur === null || typeof cur !== "object" || Array.isArray(cur)) return false;
        next = cur[s] = {};
      }
      cur = next;
    }
    const last = segs[segs.length - 1];
    if (Array.isArray(cur)) {
      if (!/^\d+$/.test(last) || Number(last) >= cur.length) return false;
      cur[Number(last)] = v;
      return true;
    }
    if (cur === null || typeof cur !== "object") return false;
    cur[last] = v;
    return true;
  },
  /** Removes the value at `ptr`; returns it, or `undefined`. */
  remove(value, ptr) {
    const segs = segments(ptr);
    if (!segs || segs.length === 0) return undefined;
    let parent = value;
    for (const s of segs.slice(0, -1)) {
      parent = step(parent, s);
      if (parent === MISSING) return undefined;
    }
    const last = segs[segs.length - 1];
    if (Array.isArray(parent) && /^\d+$/.test(last) && Number(last) < parent.length) return parent.splice(Number(last), 1)[0];
    if (parent !== null && typeof parent === "object" && !Array.isArray(parent) && Object.hasOwn(parent, last)) {
      const old = parent[last];
      delete parent[last];
      return old;
    }
    return undefined;
  },
  /** Copies the value at `ptr` from `source` into `target` when `target` has none (absent or null). */
  copyIfAbsent(source, target, ptr) {
    const have = pointer.get(target, ptr);
    if (have !== undefined && have !== null) return false;
    const found = pointer.get(source, ptr);
    return found !== undefined && found !== null && pointer.set(target, ptr, found);
  },
};

function parse(what, text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw `${what} is not valid JSON: ${e.message}`;
  }
}

// Every failure leaves a hook as a thrown string: jco maps it to the result's error.
function guard(call) {
  try {
    return call();
  } catch (e) {
    if (typeof e === "string") throw e;
    if (e instanceof RuleError) throw e.message;
    throw `${(e && e.name) || "Error"}: ${(e && e.message) || String(e)}`;
  }
}

/** The `rules` export for jco: `export const rules = exportRule(myRule)`. */
export function exportRule(rule) {
  return {
    describe() {
      const info = rule.describe();
      return {
        name: info.name,
        version: info.version,
        kinds: info.kinds,
        scope: info.scopes,
        hooks: {
          transform: info.hookNames.includes("transform"),
          preserve: info.hookNames.includes("preserve"),
          ignorePaths: info.hookNames.includes("ignore-paths"),
        },
        reads: info.readPaths,
      };
    },
    transform(desired, intent) {
      return guard(() => {
        const obj = parse("desired", desired);
        const out = rule.transform ? rule.transform(obj, Intent.from(intent)) : obj;
        return JSON.stringify(out);
      });
    },
    preserve(existing, desired, intent) {
      return guard(() => {
        const d = parse("desired", desired);
        const out = rule.preserve ? rule.preserve(parse("existing", existing), d, Intent.from(intent)) : apply(d);
        if (!out || !["apply", "recreate", "skip"].includes(out.tag)) {
          throw new RuleError("preserve returned no decision: use apply(obj), recreate(reason) or skip(reason)");
        }
        return out.tag === "apply" ? { tag: "apply", val: JSON.stringify(out.val) } : out;
      });
    },
    ignorePaths(group, kind) {
      // ignore-paths has no error channel in WIT: a failure here is a trap, by design.
      return rule.ignorePaths ? rule.ignorePaths(group, kind) : [];
    },
  };
}

/** Writes a line to the host's structured log. */
export { log } from "downsync:rules/host@0.2.0";
