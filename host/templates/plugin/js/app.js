// The downsync rule plugin `{{name}}`: keeps `data.downstream` of ConfigMaps that exist
// downstream (a field the downstream cluster writes), and tells the differ to ignore it.
//
// Build and test it: `./build.sh && downsync plugin test {{crate}}.wasm fixtures` (README.md).
import { Info, apply, exportRule, pointer } from "downsync-rules";

const KEPT = "/data/downstream";

export const rules = exportRule({
  describe: () =>
    new Info("{{name}}", "0.1.0")
      .stateless() // keeps nothing between calls: runs in a reused instance
      .kind("", "ConfigMap")
      .scope(KEPT)
      .hooks("preserve", "ignore-paths")
      .reads("/data"),

  preserve(existing, desired) {
    pointer.copyIfAbsent(existing, desired, KEPT);
    return apply(desired);
  },

  ignorePaths: (group, kind) => (group === "" && kind === "ConfigMap" ? [KEPT] : []),
});
