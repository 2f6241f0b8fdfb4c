"""Guest SDK for downsync rule plugins (``downsync:rules@0.2.0``) written in Python.

A rule is a subclass of :class:`Rule`; :func:`export` turns it into the ``Rules`` class that
componentize-py looks for in the app module::

    from downsync_rules import Rule, Info, Apply, export, pointer

    class Keep(Rule):
        def describe(self):
            return Info("keep", "0.2.0").kind("", "Service").scope("/spec/clusterIP") \\
                .hooks("preserve").reads("/spec")

        def preserve(self, existing, desired, intent):
            pointer.copy_if_absent(existing, desired, "/spec/clusterIP")
            return Apply(desired)

    Rules = export(Keep)

Objects are plain ``dict``/``list`` values (parsed from the JSON the host sends, and
serialised back). A hook fails by raising :class:`RuleError` (or returning an
:class:`Err`): the message becomes the ``string`` of the WIT ``result``, which the host
reports as a rejection, never as a trap. Any other exception is turned into the same kind of
error, with its type in the message, so a bug in a rule is reported with a useful text rather
than an interpreter trap.

Build with the pinned componentize-py (see ``docs/plugins-other-languages.md``)::

    componentize-py -d wit -w rule componentize app -p . -p plugins/sdk-python -o rule.wasm
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Callable

from . import pointer
from .intent import Intent

__all__ = [
    "Apply",
    "Decision",
    "Err",
    "Info",
    "Intent",
    "Recreate",
    "Rule",
    "RuleError",
    "Skip",
    "export",
    "log",
    "pointer",
]

HOOKS = ("transform", "preserve", "ignore-paths")


class RuleError(Exception):
    """Raise this from a hook to refuse an object; the message is what the host reports."""


@dataclass(frozen=True)
class Err:
    """Return this from a hook instead of raising :class:`RuleError` (the Rust SDK's ``Err``)."""

    message: str


@dataclass(frozen=True)
class Apply:
    """Write this object."""

    obj: Any


@dataclass(frozen=True)
class Recreate:
    """Delete and recreate the downstream object, for this reason."""

    reason: str


@dataclass(frozen=True)
class Skip:
    """Leave the downstream object alone, for this reason."""

    reason: str


Decision = Apply | Recreate | Skip


@dataclass
class Info:
    """What a plugin says about itself; builder calls mirror the Rust SDK's ``Info``."""

    name: str
    version: str
    kinds: list[tuple[str, str]] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    hook_names: list[str] = field(default_factory=lambda: list(HOOKS))
    read_paths: list[str] = field(default_factory=list)

    def kind(self, group: str, kind: str) -> "Info":
        """Adds a handled group/kind pattern (``*`` matches anything; the core group is "")."""
        self.kinds.append((group, kind))
        return self

    def scope(self, ptr: str) -> "Info":
        """Adds a JSON pointer the plugin may write (``*`` matches one segment)."""
        self.scopes.append(ptr)
        return self

    def hooks(self, *names: str) -> "Info":
        """The hooks the rule implements ("transform", "preserve", "ignore-paths"); the host
        never calls the others."""
        for name in names:
            if name not in HOOKS:
                raise ValueError(f"unknown hook {name!r}: expected one of {', '.join(HOOKS)}")
        self.hook_names = list(names)
        return self

    def stateless(self) -> "Info":
        """Declares the rule stateless: nothing kept between calls (module globals, caches)
        changes what a later call returns. The host may then run it in a reused instance when
        the operator configures ``instances: reused`` (an interpreted guest's start-up is paid
        once, not per call). Said in the version's build metadata: ``0.2.0+stateless``."""
        self.version += (".stateless" if "+" in self.version else "+stateless")
        return self

    def reads(self, ptr: str) -> "Info":
        """Adds a part of the object the rule reads; the hooks then get only those parts."""
        self.read_paths.append(ptr)
        return self


class Rule:
    """A rule plugin. Only :meth:`describe` is required; the defaults pass objects through."""

    def describe(self) -> Info:
        raise NotImplementedError("a rule must describe itself")

    def transform(self, desired: Any, intent: Intent) -> Any:
        """Rewrites the desired (upstream) object for downstream."""
        return desired

    def preserve(self, existing: Any, desired: Any, intent: Intent) -> Decision:
        """Decides what to write, given the live downstream object and the desired one."""
        return Apply(desired)

    def ignore_paths(self, group: str, kind: str) -> list[str]:
        """JSON pointers the differ must not compare for this group and kind."""
        return []


def log(level: str, message: str) -> None:
    """Writes a line to the host's structured log ("trace", "debug", "info", "warn", "error")."""
    from wit_world.imports import host  # generated by componentize-py at build time

    host.log(getattr(host.Level, level.upper()), message)


def _parse(what: str, text: str) -> Any:
    try:
        return _json.loads(text)
    except ValueError as e:
        raise RuleError(f"{what} is not valid JSON: {e}") from None


def _render(value: Any) -> str:
    try:
        # Compact, and insertion order kept: the host compares objects, not text.
        return _json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise RuleError(f"cannot serialise result: {e}") from None


def _guard(call: Callable[[], Any]) -> Any:
    """Runs a hook; every failure leaves as the WIT result's error string."""
    from componentize_py_types import Err as WitErr

    try:
        out = call()
    except WitErr:
        raise
    except RuleError as e:
        raise WitErr(str(e)) from None
    except Exception as e:  # a bug in the rule: report it, do not trap the instance
        raise WitErr(f"{type(e).__name__}: {e}") from None
    if isinstance(out, Err):
        raise WitErr(out.message)
    return out


def export(rule: type[Rule] | Rule) -> type:
    """Returns the class componentize-py instantiates for the ``rules`` export.

    Assign it to ``Rules`` in the app module: ``Rules = export(MyRule)``.
    """
    from wit_world import exports
    from wit_world.imports import types as wit

    impl = rule() if isinstance(rule, type) else rule

    def intent(raw: Any) -> Intent:
        if isinstance(raw, wit.Intent_ServerSet):
            return Intent.server_set(list(raw.value))
        return Intent.unknown()

    flags = {"transform": wit.Hooks.TRANSFORM, "preserve": wit.Hooks.PRESERVE, "ignore-paths": wit.Hooks.IGNORE_PATHS}

    class Rules(exports.Rules):
        def describe(self) -> Any:
            info = impl.describe()
            hooks = wit.Hooks(0)
            for name in info.hook_names:
                hooks |= flags[name]
            return wit.PluginInfo(
                name=info.name,
                version=info.version,
                kinds=[wit.KindPattern(group=g, kind=k) for g, k in info.kinds],
                scope=list(info.scopes),
                hooks=hooks,
                reads=list(info.read_paths),
            )

        def transform(self, desired: str, raw: Any) -> str:
            return _guard(lambda: _render(impl.transform(_parse("desired", desired), intent(raw))))

        def preserve(self, existing: str, desired: str, raw: Any) -> Any:
            def call() -> Any:
                out = impl.preserve(_parse("existing", existing), _parse("desired", desired), intent(raw))
                if isinstance(out, Err):
                    return out
                if isinstance(out, Apply):
                    return wit.Decision_Apply(_render(out.obj))
                if isinstance(out, Recreate):
                    return wit.Decision_Recreate(out.reason)
                if isinstance(out, Skip):
                    return wit.Decision_Skip(out.reason)
                raise RuleError(f"preserve returned {type(out).__name__}, not Apply, Recreate or Skip")

            return _guard(call)

        def ignore_paths(self, group: str, kind: str) -> list[str]:
            # ignore-paths has no error channel in WIT: a failure here is a trap, by design.
            return list(impl.ignore_paths(group, kind))

    return Rules
