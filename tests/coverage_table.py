"""Turns an lcov report of `cargo llvm-cov` into docs/coverage.md: lines covered per file and
per module of host/src, with the goals of issue 29 (sync >= 85%, all of host/src >= 80%).

The unit tests live in each file's `#[cfg(test)] mod tests`, and they run in full; counting them
would flatter the figure, so every line from that attribute on is left out."""

import datetime
import os
import re
import sys

TEST_MODULE = re.compile(r"^#\[cfg\(test\)\]\s*$")


def test_module_start(path: str) -> int:
    """The first line (1-based) of the file's test module, or past the end if it has none."""
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if TEST_MODULE.match(line) and i + 1 < len(lines) and lines[i + 1].startswith("mod tests"):
            return i + 1
    return len(lines) + 1


def read_lcov(path: str) -> dict[str, dict[int, int]]:
    hits: dict[str, dict[int, int]] = {}
    current = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("SF:"):
                current = hits.setdefault(line[3:], {})
            elif line.startswith("DA:") and current is not None:
                number, count = line[3:].split(",")[:2]
                current[int(number)] = max(current.get(int(number), 0), int(count))
    return hits


def main() -> None:
    lcov, commit = sys.argv[1], sys.argv[2]
    files = []
    for name, lines in read_lcov(lcov).items():
        marker = "/host/src/"
        if marker not in name:
            continue
        rel = "host/src/" + name.split(marker, 1)[1]
        cut = test_module_start(name)
        code = {n: c for n, c in lines.items() if n < cut}
        files.append((rel, len(code), sum(1 for c in code.values() if c > 0)))
    files.sort()

    def module(rel: str) -> str:
        parts = rel.split("/")
        return "/".join(parts[:3]) if len(parts) > 3 else rel

    modules: dict[str, list[int]] = {}
    for rel, count, covered in files:
        m = modules.setdefault(module(rel), [0, 0])
        m[0] += count
        m[1] += covered
    total = [sum(c for _, c, _ in files), sum(v for _, _, v in files)]

    def pct(count: int, covered: int) -> str:
        return f"{100.0 * covered / count:.1f}%" if count else "-"

    def verdict(pair: list[int], goal: float) -> str:
        return "met" if pair[0] and pair[1] / pair[0] >= goal else "**missed**"

    sync = modules.get("host/src/sync", [0, 0])
    now = datetime.datetime.now(datetime.timezone.utc)
    out = [
        "# Test coverage",
        "",
        "Lines of `host/src` run by the unit and integration tests, measured by `tests/run.sh --coverage` "
        "(`cargo llvm-cov`). The integration tests run against two real control planes, and the `downsync` "
        "binary they start is instrumented too. The unit tests' own lines (each file's `#[cfg(test)] mod "
        "tests`) are not counted.",
        "",
        f"commit `{commit}`, {now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores",
        "",
        "| goal | measured | |",
        "| --- | --- | --- |",
        f"| `host/src/sync` ≥ 85% | {pct(*sync)} | {verdict(sync, 0.85)} |",
        f"| all of `host/src` ≥ 80% | {pct(*total)} | {verdict(total, 0.80)} |",
        "",
        "| module | lines | covered | % |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, (count, covered) in sorted(modules.items()):
        out.append(f"| `{name}` | {count} | {covered} | {pct(count, covered)} |")
    out += [f"| **all of host/src** | {total[0]} | {total[1]} | {pct(*total)} |", ""]
    out += ["| file | lines | covered | % |", "| --- | ---: | ---: | ---: |"]
    for rel, count, covered in files:
        out.append(f"| `{rel}` | {count} | {covered} | {pct(count, covered)} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
