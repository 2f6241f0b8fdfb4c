"""What the user asked for upstream: which fields a client set, which the server filled in."""

from __future__ import annotations


class Intent:
    """The intent behind a desired object, as the host derived it from ``managedFields``."""

    __slots__ = ("_known", "_server_set")

    def __init__(self, known: bool, server_set: list[str]) -> None:
        self._known = known
        self._server_set = server_set

    @classmethod
    def unknown(cls) -> "Intent":
        """Nobody can tell (the upstream object has no ``managedFields``)."""
        return cls(False, [])

    @classmethod
    def server_set(cls, paths: list[str]) -> "Intent":
        """Known: ``paths`` are the pointers of the fields no client asked for."""
        return cls(True, paths)

    def is_known(self) -> bool:
        """Whether the host could tell requested fields from server-set ones."""
        return self._known

    def requested(self, ptr: str) -> bool:
        """Whether a client asked for the field at ``ptr``; false when the intent is unknown."""
        return self._known and not self.is_server_set(ptr)

    def is_server_set(self, ptr: str) -> bool:
        """Whether the field at ``ptr`` (or an ancestor) was filled in by the upstream server."""
        return any(ptr == p or ptr.startswith(p + "/") for p in self._server_set)

    def server_set_paths(self) -> list[str]:
        """The server-set pointers, as the host sent them."""
        return list(self._server_set)
