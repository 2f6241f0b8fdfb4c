"""Example rule in Python: the downstream autoscaler owns Deployment replicas.

The same behaviour as the Rust example (examples/plugins/hpa-replicas): keep the live
``spec.replicas`` of every Deployment that exists downstream, and tell the differ to ignore
``/spec/replicas``. A Deployment created for the first time gets the desired replicas.

Build and check it (tests/guest-toolchains.sh installs the pinned componentize-py):

    componentize-py -d wit -w rule componentize app \\
        -p examples/plugins/python-hpa-replicas -p plugins/sdk-python -o python_hpa_replicas.wasm
    downsync plugin test python_hpa_replicas.wasm examples/plugins/python-hpa-replicas/fixtures
"""

from downsync_rules import Apply, Info, Rule, RuleError, export, pointer

REPLICAS = "/spec/replicas"


class HpaReplicas(Rule):
    """Keeps the autoscaler's replicas."""

    def describe(self) -> Info:
        return (
            Info("hpa-replicas", "0.2.0")
            .stateless()  # keeps nothing between calls: may run in a reused instance
            .kind("apps", "Deployment")
            .scope(REPLICAS)
            .hooks("preserve", "ignore-paths")
            .reads(REPLICAS)
        )

    def preserve(self, existing, desired, intent):
        live = pointer.get(existing, REPLICAS)
        if live is not None and pointer.get(desired, REPLICAS) != live:
            if not pointer.set(desired, REPLICAS, live):
                raise RuleError("spec is not an object")
        return Apply(desired)

    def ignore_paths(self, group, kind):
        return [REPLICAS] if (group, kind) == ("apps", "Deployment") else []


Rules = export(HpaReplicas)
