"""Finding, loading and calling plugins.

:class:`Plugins` is a pluggy plugin manager over :mod:`ledgerflow.hookspecs`. It loads, in
order: ledgerflow's own plugin (``ledgerflow.builtin``), every entry point of the group
``ledgerflow`` of the installed distributions, and then whatever is registered in code or named
by ``--app``. ``LEDGERFLOW_DISABLE_PLUGINS`` (a comma-separated list of plugin names, which for
an entry point is its name) turns plugins off.

A plugin that cannot be imported, or whose hook raises, is reported with its name (in the log,
and by :meth:`Plugins.describe`, which ``ledgerflow plugins`` prints) and the others go on: a
broken plugin never takes a worker down, and never silently.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import pluggy

from ledgerflow import hookspecs
from ledgerflow.errors import InvalidInputError, PluginError
from ledgerflow.hookspecs import PROJECT, StepInfo
from ledgerflow.model import JSON

if TYPE_CHECKING:
    from ledgerflow.engine import Engine
    from ledgerflow.expressions import ExpressionFunction
    from ledgerflow.notifiers import Notifier
    from ledgerflow.registry import ActionRegistry
    from ledgerflow.store.sql import SQLStore
    from ledgerflow.transports import Transport

__all__ = ["BUILTIN", "DISABLE_ENV", "PluginInfo", "Plugins"]

log = logging.getLogger("ledgerflow.plugins")

BUILTIN = "ledgerflow.builtin"
"""The name of ledgerflow's own plugin."""

DISABLE_ENV = "LEDGERFLOW_DISABLE_PLUGINS"
"""The environment variable listing plugins not to load, comma-separated."""

Source = Literal["builtin", "entry point", "app", "code"]


@attrs.frozen(kw_only=True)
class PluginInfo:
    """A plugin as ``ledgerflow plugins`` shows it: where it came from (its distribution and
    version for an entry point), the hooks it implements, what it registered (names by kind:
    ``actions``, ``notifiers``, ``stores``, ``transports``, ``expression_functions``), and its
    errors, if any. A disabled plugin is listed with ``disabled`` set and nothing else."""

    name: str
    source: Source
    distribution: str | None = None
    version: str | None = None
    hooks: tuple[str, ...] = ()
    registered: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    errors: tuple[str, ...] = ()
    disabled: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON form ``ledgerflow plugins --json`` prints."""
        return {
            "name": self.name,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": list(self.hooks),
            "registered": {kind: list(names) for kind, names in self.registered.items()},
            "errors": list(self.errors),
            "disabled": self.disabled,
        }


@attrs.define
class _Origin:
    source: Source
    distribution: str | None = None
    version: str | None = None


def disabled_from_env() -> frozenset[str]:
    """The plugin names ``LEDGERFLOW_DISABLE_PLUGINS`` turns off."""
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


class Plugins:
    """The plugins of one engine (or several: it holds no engine state).

    ``entry_points``: load the installed distributions' plugins; ``builtin``: register
    ledgerflow's own (without it no action, store or transport is known unless another plugin
    provides it); ``disabled``: names not to load (default: ``LEDGERFLOW_DISABLE_PLUGINS``).
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        builtin: bool = True,
        disabled: Iterable[str] | None = None,
    ) -> None:
        self.manager = pluggy.PluginManager(PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.disabled = frozenset(disabled) if disabled is not None else disabled_from_env()
        self._origins: dict[str, _Origin] = {}
        self._errors: dict[str, list[str]] = {}
        self._registered: dict[str, dict[str, list[str]]] = {}
        self._skipped: dict[str, _Origin] = {}
        self._lock = threading.Lock()
        if builtin:
            from ledgerflow.builtin import plugin as builtin_plugin

            self.register(builtin_plugin, BUILTIN, source="builtin")
        if entry_points:
            self.load_entry_points()

    # ----------------------------------------------------------------------------------------
    # Loading
    # ----------------------------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None, *, source: Source = "code") -> str:
        """Add ``plugin`` (a module, class or object holding ``@hookimpl`` functions) under
        ``name`` (default: its ``__name__``); returns the name. A disabled name is skipped.

        Raises :class:`PluginError`, naming the plugin, when the name is taken or an
        implementation does not fit its hook (an unknown argument, say).
        """
        return self._register(plugin, name, _Origin(source))

    def _register(self, plugin: object, name: str | None, origin: _Origin) -> str:
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.disabled:
            log.info("plugin %s is disabled by %s", name, DISABLE_ENV)
            self._skipped[name] = origin
            return name
        if self.manager.has_plugin(name):
            raise PluginError(f"plugin {name}: a plugin of that name is already registered")
        try:
            self.manager.register(plugin, name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name}: {exc}") from exc
        try:
            self.manager.check_pending()  # a misspelt hook name is an error, not a silent no-op
        except pluggy.PluginValidationError as exc:
            self.manager.unregister(name=name)
            raise PluginError(f"plugin {name}: {exc}") from exc
        runners = self.manager.hook.ledgerflow_run_step.get_hookimpls()
        if origin.source != "builtin" and any(
            i.plugin_name == name and not (i.wrapper or i.hookwrapper) for i in runners
        ):
            self.manager.unregister(name=name)
            raise PluginError(
                f"plugin {name}: ledgerflow_run_step must be a wrapper "
                "(@hookimpl(wrapper=True)); a plain implementation could run the action twice"
            )
        self._origins[name] = origin
        return name

    def load_entry_points(self) -> None:
        """Load every entry point of the group ``ledgerflow`` not loaded yet; one that fails
        to import or to register is reported with its name, and the others still load."""
        for entry in importlib.metadata.entry_points(group=PROJECT):
            dist = entry.dist
            origin = _Origin(
                "entry point",
                dist.metadata["Name"] if dist is not None else None,
                dist.version if dist is not None else None,
            )
            if self.manager.has_plugin(entry.name) or entry.name in self._errors:
                continue
            if entry.name in self.disabled:
                log.info("plugin %s is disabled by %s", entry.name, DISABLE_ENV)
                self._skipped[entry.name] = origin
                continue
            try:
                plugin = entry.load()
                self._register(plugin, entry.name, origin)
            except Exception as exc:
                self._failed(entry.name, origin, f"cannot be loaded: {_describe(exc)}")

    def _failed(self, name: str, origin: _Origin, problem: str) -> None:
        with self._lock:
            self._origins.setdefault(name, origin)
            problems = self._errors.setdefault(name, [])
            if problem in problems:
                return  # reported once
            problems.append(problem)
        log.error("plugin %s (%s): %s", name, origin.distribution or origin.source, problem)

    def report(self, plugin: str, problem: str) -> None:
        """Record ``problem`` against ``plugin`` (logged once, listed by :meth:`describe`)."""
        self._failed(plugin, self._origin(plugin), problem)

    # ----------------------------------------------------------------------------------------
    # Registration hooks
    # ----------------------------------------------------------------------------------------

    def _each(
        self, hook: str, only: str | None = None
    ) -> Iterable[tuple[str, Callable[..., Any], tuple[str, ...]]]:
        """The implementations of ``hook`` in call order (last registered first), as
        ``(plugin name, function, argument names)``; those of plugin ``only`` if given."""
        caller = getattr(self.manager.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                continue
            if only is None or impl.plugin_name == only:
                yield impl.plugin_name, impl.function, tuple(impl.argnames)

    def _collect(self, hook: str, kind: str, only: str | None = None) -> dict[str, Any]:
        """Run a registration hook that fills a mapping, plugin by plugin, keeping what each
        added; a name two plugins register is refused for the later one."""
        found: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for plugin, function, argnames in reversed(list(self._each(hook, only))):
            mine: dict[str, Any] = {}
            try:
                function(*([mine] if argnames else []))
            except Exception as exc:
                self._failed(plugin, self._origin(plugin), f"{hook} failed: {_describe(exc)}")
                continue
            for name, value in mine.items():
                if name in found:
                    self._failed(
                        plugin,
                        self._origin(plugin),
                        f"{kind} {name!r} is already registered by plugin {owner[name]}",
                    )
                    continue
                found[name] = value
                owner[name] = plugin
                self._note(plugin, kind, name)
        return found

    def _origin(self, plugin: str) -> _Origin:
        return self._origins.get(plugin, _Origin("code"))

    def _note(self, plugin: str, kind: str, name: str) -> None:
        with self._lock:
            names = self._registered.setdefault(plugin, {}).setdefault(kind, [])
            if name not in names:
                names.append(name)

    def stores(self) -> dict[str, Callable[..., SQLStore]]:
        """Store factories by URL scheme, from every plugin."""
        return self._collect("ledgerflow_register_stores", "stores")

    def transports(self) -> dict[str, Callable[[str, Engine], Transport]]:
        """Transport factories by URL scheme, from every plugin."""
        return self._collect("ledgerflow_register_transports", "transports")

    def notifiers(self, only: str | None = None) -> dict[str, Notifier]:
        """Notifiers by name, from every plugin (or plugin ``only``)."""
        return self._collect("ledgerflow_register_notifiers", "notifiers", only)

    def store_for(self, url: str, **options: Any) -> SQLStore:
        """The store for database ``url``, built by the factory registered for its scheme
        (``postgresql+psycopg://…`` counts as ``postgresql``), with ``options``."""
        if not isinstance(url, str) or ":" not in url:
            raise InvalidInputError(f"not a database URL: {url!r}")
        scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
        factories = self.stores()
        if scheme not in factories:
            known = ", ".join(sorted(factories)) or "none"
            raise InvalidInputError(f"no store for URLs of scheme {scheme!r} (known: {known})")
        return factories[scheme](url, **options)

    def transport_for(self, url: str, engine: Engine) -> Transport:
        """The transport for broker ``url`` (``database`` for the store's own outbox)."""
        scheme = url.split(":", 1)[0].lower()
        factories = self.transports()
        if scheme not in factories:
            known = ", ".join(sorted(factories)) or "none"
            raise InvalidInputError(
                f"no transport for brokers of scheme {scheme!r} (known: {known}); "
                "is its plugin installed?"
            )
        return factories[scheme](url, engine)

    def register_expression_functions(self, only: str | None = None) -> None:
        """Make every plugin's (or plugin ``only``'s) expression functions callable in
        expressions (they are registered process-wide, see
        :func:`~ledgerflow.expressions.register_functions`), one plugin at a time: a plugin
        whose hook raises, or whose function clashes with another's, is reported and left
        out."""
        from ledgerflow.expressions import register_functions

        hook = "ledgerflow_register_expression_functions"
        for plugin, function, argnames in reversed(list(self._each(hook, only))):
            mine: list[ExpressionFunction] = []
            try:
                function(*([mine] if argnames else []))
                register_functions(mine)
            except Exception as exc:
                self._failed(plugin, self._origin(plugin), f"{hook} failed: {_describe(exc)}")
                continue
            for fn in mine:
                self._note(plugin, "expression_functions", fn.name)

    def register_actions(
        self, registry: ActionRegistry, engine: Engine, only: str | None = None
    ) -> None:
        """Let every plugin (or plugin ``only``) register its actions in ``registry``, one
        plugin at a time: a plugin that raises, or registers a name already taken, is reported
        and its actions are left out; the others go on."""
        from ledgerflow.registry import ActionRegistry

        for plugin, function, argnames in reversed(
            list(self._each("ledgerflow_register_actions", only))
        ):
            staged = ActionRegistry()
            try:
                function(*[{"registry": staged, "engine": engine}[a] for a in argnames])
            except Exception as exc:
                self._failed(
                    plugin,
                    self._origin(plugin),
                    f"ledgerflow_register_actions failed: {_describe(exc)}",
                )
                continue
            for name in staged:
                action = staged.get(name)
                if name in registry:
                    if not _same_action(registry.get(name), action):
                        self._failed(
                            plugin,
                            self._origin(plugin),
                            f"action {name!r} is already registered; left out",
                        )
                    continue
                registry.register(action)
                self._note(plugin, "actions", name)

    # ----------------------------------------------------------------------------------------
    # Calling hooks while running
    # ----------------------------------------------------------------------------------------

    def has(self, hook: str) -> bool:
        """Whether any plugin implements ``hook``."""
        return bool(getattr(self.manager.hook, hook).get_hookimpls())

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call a life-cycle hook's every implementation; one that raises is logged with its
        plugin's name and the others still run."""
        for plugin, function, argnames in self._each(hook):
            try:
                function(*[kwargs[a] for a in argnames])
            except Exception as exc:
                self._hook_failed(plugin, hook, exc)

    def decide(self, hook: str, **kwargs: Any) -> Any:
        """The first answer other than ``None`` of a policy hook's implementations (the last
        registered is asked first); one that raises is logged with its plugin's name and
        passed over."""
        for plugin, function, argnames in self._each(hook):
            try:
                answer = function(*[kwargs[a] for a in argnames])
            except Exception as exc:
                self._hook_failed(plugin, hook, exc)
                continue
            if answer is not None:
                return answer
        return None

    def run_step(self, step: StepInfo, params: Any, call: Callable[[], JSON]) -> JSON:
        """Run one attempt of ``step`` through :func:`~ledgerflow.hookspecs.ledgerflow_run_step`
        and its wrappers; an exception of a wrapper fails the attempt like the action's own."""
        hook = self.manager.hook.ledgerflow_run_step
        if not any(not (i.wrapper or i.hookwrapper) for i in hook.get_hookimpls()):
            return call()  # without ledgerflow's own plugin nothing else would run the step
        result: JSON = hook(step=step, params=params, call=call)
        return result

    def _hook_failed(self, plugin: str, hook: str, exc: BaseException) -> None:
        log.error("plugin %s failed in %s: %s", plugin, hook, _describe(exc), exc_info=exc)
        with self._lock:
            problems = self._errors.setdefault(plugin, [])
            problem = f"{hook} raised {_describe(exc)}"
            if problem not in problems and len(problems) < 20:
                problems.append(problem)

    # ----------------------------------------------------------------------------------------
    # Describing
    # ----------------------------------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every plugin loaded, failed or disabled, in load order."""
        infos = []
        with self._lock:
            names = list(dict.fromkeys([*self._origins, *self._errors]))
            for name in names:
                origin = self._origins.get(name, _Origin("code"))
                plugin = self.manager.get_plugin(name)
                hooks = (
                    tuple(sorted(c.name for c in self.manager.get_hookcallers(plugin) or ()))
                    if plugin is not None
                    else ()
                )
                infos.append(
                    PluginInfo(
                        name=name,
                        source=origin.source,
                        distribution=origin.distribution,
                        version=origin.version,
                        hooks=hooks,
                        registered={
                            kind: tuple(found)
                            for kind, found in self._registered.get(name, {}).items()
                        },
                        errors=tuple(self._errors.get(name, ())),
                    )
                )
            for name, origin in self._skipped.items():
                infos.append(
                    PluginInfo(
                        name=name,
                        source=origin.source,
                        distribution=origin.distribution,
                        version=origin.version,
                        disabled=True,
                    )
                )
        return infos


def _same_action(registered: Any, staged: Any) -> bool:
    """Whether ``staged`` is the action already registered under its name, as a registry
    shared by several engines gets it from the same plugin again: same kind, schema and
    function (by its qualified name: closures are new objects on each registration)."""
    if registered is staged:
        return True

    def origin(fn: Any) -> tuple[str, str]:
        return getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn))

    return bool(
        registered.kind == staged.kind
        and registered.description == staged.description
        and registered.json_schema() == staged.json_schema()
        and origin(registered.fn) == origin(staged.fn)
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
