"""JSON pointer (RFC 6901) get, set, remove and copy-if-absent over parsed JSON values."""

from __future__ import annotations

from typing import Any

_MISSING = object()


def _segments(ptr: str) -> list[str] | None:
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        return None
    return [s.replace("~1", "/").replace("~0", "~") for s in ptr[1:].split("/")]


def _step(cur: Any, segment: str) -> Any:
    if isinstance(cur, dict):
        return cur.get(segment, _MISSING)
    if isinstance(cur, list) and segment.isdigit():
        i = int(segment)
        return cur[i] if i < len(cur) else _MISSING
    return _MISSING


def get(value: Any, ptr: str, default: Any = None) -> Any:
    """The value at ``ptr``, or ``default`` when there is none."""
    segments = _segments(ptr)
    if segments is None:
        return default
    cur = value
    for segment in segments:
        cur = _step(cur, segment)
        if cur is _MISSING:
            return default
    return cur


def has(value: Any, ptr: str) -> bool:
    """Whether ``ptr`` names a value (a null counts)."""
    return get(value, ptr, _MISSING) is not _MISSING


def set(value: Any, ptr: str, new: Any) -> bool:  # noqa: A001 - mirrors the Rust SDK's name
    """Sets the value at ``ptr``, creating missing objects on the way. Returns False when the
    path runs through a scalar or an array index that does not exist (the root cannot be set)."""
    segments = _segments(ptr)
    if not segments:
        return False
    cur = value
    for segment in segments[:-1]:
        nxt = _step(cur, segment)
        if nxt is _MISSING or nxt is None:
            if not isinstance(cur, dict):
                return False
            nxt = cur[segment] = {}
        cur = nxt
    last = segments[-1]
    if isinstance(cur, dict):
        cur[last] = new
        return True
    if isinstance(cur, list) and last.isdigit() and int(last) < len(cur):
        cur[int(last)] = new
        return True
    return False


def remove(value: Any, ptr: str) -> Any:
    """Removes the value at ``ptr`` and returns it (None when there was none)."""
    segments = _segments(ptr)
    if not segments:
        return None
    parent = get(value, "/" + "/".join(s.replace("~", "~0").replace("/", "~1") for s in segments[:-1])) if len(segments) > 1 else value
    last = segments[-1]
    if isinstance(parent, dict):
        return parent.pop(last, None)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    return None


def copy_if_absent(source: Any, target: Any, ptr: str) -> bool:
    """Copies the value at ``ptr`` from ``source`` into ``target`` when ``target`` has none
    (absent or null). Returns whether a value was copied."""
    if get(target, ptr) is not None:
        return False
    found = get(source, ptr)
    return found is not None and set(target, ptr, found)
