// Example rule in JavaScript: the downstream autoscaler owns Deployment replicas.
//
// The same behaviour as the Rust example (examples/plugins/hpa-replicas): keep the live
// `spec.replicas` of every Deployment that exists downstream, and tell the differ to ignore
// `/spec/replicas`. A Deployment created for the first time gets the desired replicas.
//
// Build and check it (tests/guest-toolchains.sh installs the pinned jco; the build links
// plugins/sdk-js as node_modules/downsync-rules):
//
//   jco componentize app.js --wit wit -n rule --backend qjs --backend-qjs-disable-async --bundle -o js_hpa_replicas.wasm
//   downsync plugin test js_hpa_replicas.wasm examples/plugins/js-hpa-replicas/fixtures
import { Info, RuleError, apply, exportRule, pointer } from "downsync-rules";

const REPLICAS = "/spec/replicas";

export const rules = exportRule({
  describe: () =>
    new Info("hpa-replicas", "0.2.0")
      .stateless() // keeps nothing between calls: may run in a reused instance
      .kind("apps", "Deployment")
      .scope(REPLICAS)
      .hooks("preserve", "ignore-paths")
      .reads(REPLICAS),

  preserve(existing, desired) {
    const live = pointer.get(existing, REPLICAS);
    if (live !== undefined && live !== null && pointer.get(desired, REPLICAS) !== live) {
      if (!pointer.set(desired, REPLICAS, live)) throw new RuleError("spec is not an object");
    }
    return apply(desired);
  },

  ignorePaths: (group, kind) => (group === "apps" && kind === "Deployment" ? [REPLICAS] : []),
});
