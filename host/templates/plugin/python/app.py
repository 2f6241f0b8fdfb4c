"""The downsync rule plugin ``{{name}}``: keeps ``data.downstream`` of ConfigMaps that exist
downstream (a field the downstream cluster writes), and tells the differ to ignore it.

Build and test it: ``./build.sh && downsync plugin test {{crate}}.wasm fixtures`` (README.md).
"""

from downsync_rules import Apply, Info, Rule, export, pointer

KEPT = "/data/downstream"


class Plugin(Rule):
    def describe(self) -> Info:
        return (
            Info("{{name}}", "0.1.0")
            .stateless()  # keeps nothing between calls: runs in a reused instance
            .kind("", "ConfigMap")
            .scope(KEPT)
            .hooks("preserve", "ignore-paths")
            .reads("/data")
        )

    def preserve(self, existing, desired, intent):
        pointer.copy_if_absent(existing, desired, KEPT)
        return Apply(desired)

    def ignore_paths(self, group, kind):
        return [KEPT] if (group, kind) == ("", "ConfigMap") else []


Rules = export(Plugin)
