"""One registry of estimator factories, filled from the entry-point group ``sbn_bench.estimators``
(the built-ins are registered through it in our own ``pyproject.toml``) and from plugin files.

A plugin file (``--plugin my_est.py``) defines a module-level dict ``ESTIMATORS`` mapping names to
factories, exactly what an entry point would point at. Every factory is checked when it loads
(keyword-only hyperparameters with defaults; called with its defaults it must return an
:class:`~sbn_bench.estimators.base.Estimator` of that name with valid flags); a broken one is
recorded in :attr:`Registry.errors` with its name and origin, and the others still load.

Estimator specs on the command line: ``name`` or ``name:key=value,key=value``, e.g.
``concrete:tau=0.1``; a list is comma-separated (``psa,st,concrete:tau=0.1,arm``).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import inspect
import linecache
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeGuard

from sbn_bench.errors import ArgumentError, SbnBenchError, short_repr
from sbn_bench.estimators import builtin
from sbn_bench.estimators.base import RANDOMNESS, ContractError, Estimator

GROUP = "sbn_bench.estimators"

CHECK_WIDTHS = ((2, 5, 5, 1), (2, 5, 5, 5, 1), (1, 1, 1), (3, 4, 2))
"""Networks on which a factory's ``evals_per_sample`` and ``bytes_per_sample`` are checked when it
loads (so that ``sbn-bench list`` and the runner's memory planner cannot fail on them later)."""

Factory = Callable[..., Estimator]


class EstimatorSpecError(SbnBenchError, ValueError):
    """An estimator spec that names an unknown estimator or hyperparameter, or a bad value
    (``argument`` is the spec, or ``NAME:KEY`` for a hyperparameter)."""


class PluginFileError(SbnBenchError, ValueError):
    """A plugin file named explicitly (``--plugin FILE``) that cannot be loaded at all, or whose
    estimator takes a name already registered (``argument`` is ``"plugins"``, ``value`` the file).
    The file's content (or absence) is at fault: the command line exits with status 1."""

    usage = False


@dataclass(frozen=True)
class PluginError:
    """A plugin that failed to load or broke the contract.

    Attributes:
        name: the estimator's name (for a whole plugin file: the file's stem).
        origin: ``"plugin file '…'"`` or ``"entry point …"``.
        message: why.
        whole_file: the plugin file itself could not be loaded (missing, import error, no
            ``ESTIMATORS`` dict), as opposed to one broken factory in a loadable file.
    """

    name: str
    origin: str
    message: str
    whole_file: bool = False
    clash: bool = False
    """The name was already registered (a built-in, an entry point, another plugin)."""

    def __str__(self) -> str:
        return f"estimator {self.name!r} from {self.origin}: {self.message}"


@dataclass
class Registry:
    """Estimator factories by name, where each came from, and the plugins that failed."""

    factories: dict[str, Factory] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    errors: list[PluginError] = field(default_factory=list)
    sources: list[PluginSource] = field(default_factory=list)
    """The plugin files loaded, with their text (what workers elsewhere load)."""

    def names(self) -> list[str]:
        return sorted(self.factories)

    def describe(self, widths: tuple[int, ...] = (2, 5, 5, 5, 1)) -> list[dict[str, Any]]:
        """Every registered estimator with its flags, as ``sbn-bench list --json`` prints them:
        name, family, unbiased, randomness, ``evals_per_sample`` (on the net ``widths``, the
        paper's by default), noises, losses, layers, single_layer, adaptive, hyperparams (the
        defaults), description, origin and ``exact_mode`` (it has a path surrogate)."""
        entries = []
        for name in self.names():
            with plugin_output():
                est = self.factories[name]()
            entries.append({
                "name": name, "family": est.family, "unbiased": est.unbiased,
                "randomness": est.randomness, "evals_per_sample": est.evals(widths),
                "noises": sorted(est.noises), "losses": sorted(est.losses),
                "layers": sorted(est.layers), "single_layer": est.single_layer,
                "adaptive": est.adapt is not None, "hyperparams": dict(est.hyperparams),
                "description": est.description, "origin": self.origins[name],
                "exact_mode": est.path_surrogate is not None,
            })
        return entries

    def add(self, name: str, factory: Any, origin: str) -> bool:
        """Check ``factory`` and register it; on failure record a :class:`PluginError`. A name
        already registered elsewhere is a clash whether or not the factory works (a broken
        plugin ``psa`` must not leave the built-in to be measured in its place unnoticed)."""
        if not name or name != name.strip() or re.search(r"[:,=]", name):
            self.errors.append(PluginError(
                name, origin, f"name {name!r} cannot always be selected: an estimator spec is "
                "NAME or NAME:key=value,... in a comma list of specs, so a name must be "
                "non-empty, without ':', ',', '=' or spaces at its ends"))
            return False
        if name in self.factories and self.origins[name] != origin:
            self.errors.append(PluginError(
                name, origin, f"name already registered by {self.origins[name]}; kept that one",
                clash=True))
            return False
        try:
            with plugin_output():
                check_factory(name, factory)
        except (Exception, SystemExit) as e:  # a plugin may raise anything: record it, go on
            self.errors.append(PluginError(name, origin, f"{type(e).__name__}: {e}"))
            return False
        self.factories[name] = factory
        self.origins[name] = origin
        return True

    def create(self, spec: str) -> Estimator:
        """Build the estimator a spec names, e.g. ``"concrete:tau=0.1"``.

        Raises:
            EstimatorSpecError: unknown name (with close matches), unknown hyperparameter (with
                the valid ones), or a value of the wrong type or out of range.
        """
        name, raw = _split_spec(spec)
        if name not in self.factories:
            failed = [e for e in self.errors if e.name == name]
            if failed:
                err = EstimatorSpecError(f"estimator {name!r} failed to load: {failed[0]}",
                                         argument=spec, value=name,
                                         expected="an estimator that loads")
                err.usage = False  # its plugin file is at fault, not the spec (exit status 1)
                raise err
            close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
            unloaded = [e.message if e.origin in e.message else f"{e.origin} ({e.message})"
                        for e in self.errors if e.whole_file]
            also = (f" Plugin files that failed to load (it may be defined there): "
                    f"{'; '.join(unloaded)}." if unloaded else "")
            raise EstimatorSpecError(f"estimator {name!r} is unknown{hint} Known estimators: "
                                     f"{', '.join(self.names())}.{also}", argument=spec, value=name,
                                     expected=f"one of {', '.join(self.names())}")
        factory = self.factories[name]
        params = hyperparameters(factory)
        kwargs: dict[str, Any] = {}
        for key, text in raw.items():
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=2, cutoff=0.5)
                hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
                valid = ", ".join(params) or "none"
                raise EstimatorSpecError(f"estimator {name!r} has no hyperparameter {key!r}{hint}"
                                         f"; its hyperparameters: {valid}", argument=spec,
                                         value=key, expected=f"one of {valid}")
            kwargs[key] = _convert(name, key, text, params[key])
        try:
            with plugin_output():
                est = factory(**kwargs)
        except (ValueError, TypeError) as e:
            raise EstimatorSpecError(f"estimator spec {spec!r}: {e}", argument=spec,
                                     value=getattr(e, "value", SbnBenchError.UNSET),
                                     expected=getattr(e, "expected", None)) from None
        except (Exception, SystemExit) as e:  # a plugin factory may raise anything
            raise EstimatorSpecError(f"estimator spec {spec!r}: the factory of {name!r} "
                                     f"({self.origins.get(name)}) raised {type(e).__name__}: "
                                     f"{e}", argument=spec) from None
        if not isinstance(est, Estimator) or est.name != name:
            got = f"an estimator named {est.name!r}" if isinstance(est, Estimator) else \
                type(est).__name__
            raise EstimatorSpecError(f"estimator spec {spec!r}: the factory of {name!r} "
                                     f"({self.origins.get(name)}) returned {got}, expected an "
                                     f"sbn_bench.Estimator named {name!r}", argument=spec)
        self._check_round_trip(est, factory)
        return est

    def _check_round_trip(self, est: Estimator, factory: Factory) -> None:
        """:func:`spec_problem` for an estimator built from a spec.

        Raises:
            EstimatorSpecError: the plugin is at fault (exit status 1), naming its file.
        """
        why = spec_problem(est, factory)
        if why is not None:
            err = EstimatorSpecError(f"estimator {est.name!r} ({self.origins.get(est.name)}): {why}",
                                     argument=est.spec, value=est.spec,
                                     expected="hyperparams that match the factory's keyword arguments")
            err.usage = False
            raise err

    def create_many(self, specs: str | Sequence[str]) -> list[Estimator]:
        """Build a list from ``"psa,st,concrete:tau=0.1"`` or a sequence of specs."""
        if not isinstance(specs, (str, list, tuple)):
            raise EstimatorSpecError(f"argument estimators={short_repr(specs, 60)} is a "
                                     f"{type(specs).__name__}; expected 'psa,st,arm' or a list of "
                                     "specs", argument="estimators", value=specs,
                                     expected="e.g. 'psa,st,arm'")
        items = split_specs(specs) if isinstance(specs, str) else list(specs)
        if not items:
            raise EstimatorSpecError("argument estimators is empty; expected e.g. 'psa,st,arm'",
                                     argument="estimators", value=specs,
                                     expected="e.g. 'psa,st,arm'")
        return [self.create(s) for s in items]


def hyperparameters(factory: Factory) -> dict[str, Any]:
    """A factory's keyword-only hyperparameters and their defaults."""
    sig = inspect.signature(factory)
    return {n: p.default for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}


def check_signature(name: str, factory: Any) -> None:
    """A factory is callable and its parameters are keyword-only hyperparameters with defaults.

    Raises:
        ContractError: what is wrong, naming the estimator.
    """
    if not callable(factory):
        raise ContractError(f"factory for {name!r} is not callable (got {type(factory).__name__})",
                            argument=name)
    sig = inspect.signature(factory)
    for p in sig.parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.default is p.empty:
            raise ContractError(f"factory for {name!r}: parameter {p.name!r} must be keyword-only "
                                "with a default (hyperparameters are keyword-only)", argument=name)


def plugin_output() -> contextlib.AbstractContextManager[Any]:
    """Where a plugin's prints go while it is imported or its factories run: to stderr, so that
    stdout stays the command's own (``list --json`` valid JSON)."""
    return contextlib.redirect_stdout(sys.stderr)


def spec_problem(est: Estimator, factory: Factory) -> str | None:
    """Why an estimator's own spec does not name it again, or None when it does: worker processes
    and ``--resume`` rebuild estimators from their spec, so a plugin declaring
    ``hyperparams=(("d", c),)`` for a factory taking ``c``, or a value no spec can spell (a tuple),
    ran serially and failed in every worker. The spec is parsed as :meth:`Registry.create` parses
    one, the factory called with its values, and the estimator it makes must have the same spec."""
    params = hyperparameters(factory)
    try:
        _, raw = _split_spec(est.spec)
        unknown = [k for k in raw if k not in params]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a hyperparameter of its factory (those are: "
                             f"{', '.join(params) or 'none'})")
        kwargs = {key: _convert(est.name, key, text, params[key]) for key, text in raw.items()}
        with plugin_output():
            again = factory(**kwargs)
        if not isinstance(again, Estimator) or again.spec != est.spec:
            made = again.spec if isinstance(again, Estimator) else type(again).__name__
            raise ValueError(f"made from it, the factory gives {made!r}")
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin factory may raise anything
        why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        return (f"its spec {est.spec!r} does not name it again ({why}); an estimator's "
                "hyperparams must be its factory's keyword arguments with values of their type, "
                "as worker processes and --resume rebuild it from its spec")
    return None


def check_factory(name: str, factory: Any) -> Estimator:
    """Verify a factory against the contract (pluggy's ``_verify_hook``, for estimators).

    Raises:
        ContractError: what is wrong, naming the estimator.
    """
    check_signature(name, factory)
    est = factory()
    if not isinstance(est, Estimator):
        raise ContractError(f"factory for {name!r} returned {type(est).__name__}, expected an "
                            "sbn_bench.Estimator", argument=name)
    if est.name != name:
        raise ContractError(f"factory registered as {name!r} returned an estimator named "
                            f"{est.name!r}", argument=name)
    if est.randomness not in RANDOMNESS:
        raise ContractError(f"estimator {name!r}: randomness {est.randomness!r} is not one of "
                            f"{', '.join(RANDOMNESS)}", argument=name)
    if not callable(est.surrogate):
        raise ContractError(f"estimator {name!r}: surrogate is not callable", argument=name)
    if est.path_surrogate is not None and est.randomness != "path":
        raise ContractError(f"estimator {name!r}: path_surrogate given but randomness is "
                            f"{est.randomness!r}, expected 'path'", argument=name)
    why = spec_problem(est, factory)
    if why is not None:
        raise ContractError(f"estimator {name!r}: {why}", argument=name)
    for widths in CHECK_WIDTHS:
        est.evals(widths)
        est.evals_in_memory(widths)
        est.memory_per_sample(widths, 10, 8)
    return est


def _split_spec(spec: str) -> tuple[str, dict[str, str]]:
    if not isinstance(spec, str):
        raise EstimatorSpecError(f"estimator spec {short_repr(spec, 60)} is a {type(spec).__name__}; "
                                 "expected a string such as 'psa' or 'concrete:tau=0.1'",
                                 argument=str(spec)[:60])
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise EstimatorSpecError(f"estimator spec {spec!r} has no name; expected NAME or "
                                 "NAME:key=value,...", argument=spec)
    raw: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise EstimatorSpecError(f"estimator spec {spec!r}: {item!r} is not key=value",
                                     argument=spec, value=item, expected="key=value")
        if key.strip() in raw:  # the last would win, and the spec recorded would say both
            raise EstimatorSpecError(f"estimator spec {spec!r} gives {key.strip()!r} twice; "
                                     "expected each hyperparameter once", argument=spec,
                                     value=key.strip(), expected="each hyperparameter once")
        raw[key.strip()] = value.strip()
    return name, raw


def split_specs(text: str) -> list[str]:
    """Split ``"psa,concrete:tau=0.1,k=2,st"`` into ``["psa", "concrete:tau=0.1,k=2", "st"]``:
    a ``key=value`` item without ``:`` continues the previous estimator's hyperparameters.

    An empty or blank ``text`` gives ``[]``.

    Raises:
        EstimatorSpecError: an empty item (``"psa,,st"``, ``"psa,st,"``), naming the value.
    """
    out: list[str] = []
    items = [s.strip() for s in text.split(",")]
    if items == [""]:
        return out
    if "" in items:
        where = ", ".join(str(i + 1) for i, s in enumerate(items) if not s)
        raise EstimatorSpecError(f"argument estimators={text!r} has an empty item (position {where} "
                                 "of the comma-separated list); expected specs separated by single "
                                 "commas, e.g. 'psa,st,concrete:tau=0.1'", argument="estimators",
                                 value=text, expected="specs separated by single commas")
    for item in items:
        if "=" in item and ":" not in item and out:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


def _convert(name: str, key: str, text: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]  # quoted, as Estimator.spec writes a string: 'raise' is raise
        return text
    except ValueError:
        raise EstimatorSpecError(f"estimator {name!r}: hyperparameter {key}={text!r} is not a "
                                 f"valid {kind.__name__} (default {default!r})",
                                 argument=f"{name}:{key}", value=text,
                                 expected=f"a {kind.__name__}") from None


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=GROUP)


@dataclass(frozen=True)
class PluginSource:
    """A plugin file's path and the text that was loaded from it: what a worker on another machine
    needs to load the same estimators (:func:`load_plugin_source`) without the file."""

    path: str
    text: str


def load_plugin_file(registry: Registry, path: str | os.PathLike[str]) -> list[str]:
    """Import a plugin file and register its ``ESTIMATORS`` dict; returns the names it added. The
    text loaded is kept in ``registry.sources``.

    Raises:
        PluginFileError / ContractError: the file is missing, does not import, or has no
            ``ESTIMATORS`` dict (the message names the file). Individual broken factories are
            recorded in ``registry.errors`` instead.
    """
    path = Path(path)
    origin = f"plugin file {str(path)!r}"
    if not path.exists():
        raise PluginFileError(f"{origin} does not exist", argument="plugins", value=str(path),
                              expected="an existing Python file")
    if not path.is_file() or path.suffix != ".py":
        raise ContractError(f"{origin} is not a Python file (expected a .py file defining "
                            "ESTIMATORS)", argument=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ContractError(f"{origin} cannot be read: {e}", argument=str(path)) from None
    return load_plugin_source(registry, PluginSource(str(path), text))


def load_plugin_source(registry: Registry, source: PluginSource) -> list[str]:
    """Import a plugin from its text (as :func:`load_plugin_file` does from its file, which need not
    exist here: a worker of a cluster loads the manager's plugins this way) and register its
    ``ESTIMATORS`` dict; returns the names it added. The module is named after a hash of the path
    and text, and tracebacks show the plugin's lines.

    Raises:
        ContractError: the text does not import, or defines no ``ESTIMATORS`` dict (naming the
            file).
    """
    path = source.path
    origin = f"plugin file {path!r}"
    digest = hashlib.sha256(f"{path}\0{source.text}".encode()).hexdigest()[:16]
    mod_name = f"sbn_bench_plugin_{digest}"
    module = types.ModuleType(mod_name)
    module.__file__ = path
    sys.modules[mod_name] = module
    linecache.cache[path] = (len(source.text), None, source.text.splitlines(True), path)
    try:
        with plugin_output():
            exec(compile(source.text, path, "exec"), module.__dict__)  # noqa: S102 - a plugin, by design
    except (Exception, SystemExit) as e:  # a plugin's sys.exit() must not end the caller
        sys.modules.pop(mod_name, None)
        raise ContractError(f"{origin} failed to import: {type(e).__name__}: {e}",
                            argument=path) from None
    table = getattr(module, "ESTIMATORS", None)
    if not isinstance(table, dict):
        raise ContractError(f"{origin} defines no ESTIMATORS dict (name -> factory)", argument=path)
    registry.sources.append(source)
    return [n for n, f in table.items() if registry.add(str(n), f, origin)]


def plugin_paths(plugins: object) -> tuple[str | os.PathLike[str], ...]:
    """``plugins`` as a tuple of paths: one path (a string is one file, not its characters), or a
    sequence of them, each file once (the first spelling of a file named twice).

    Raises:
        ArgumentError: naming ``plugins`` when it is neither (None, a number, bytes, …).
    """
    def is_path(p: object) -> TypeGuard[str | os.PathLike[str]]:
        # a non-empty text path ('' would be read as '.')
        if not isinstance(p, (str, os.PathLike)):
            return False
        try:
            text = os.fspath(p)
        except TypeError:  # an os.PathLike whose __fspath__ returns neither str nor bytes
            return False
        return isinstance(text, str) and text != ""

    if is_path(plugins):
        return (plugins,)
    if isinstance(plugins, (list, tuple)) and all(map(is_path, plugins)):
        # one file named twice (or under two spellings: "p.py", "./p.py", its absolute path) is
        # loaded once: its estimators would clash with themselves
        seen: dict[str, str | os.PathLike[str]] = {}
        for p in plugins:
            seen.setdefault(os.path.realpath(p), p)
        return tuple(seen.values())
    raise ArgumentError(f"argument plugins={short_repr(plugins, 60)} must be a path or a list of "
                        "paths of plugin files (non-empty text)", argument="plugins",
                        value=plugins, expected="a path or a list of paths")


def load_registry(plugins: Sequence[str | os.PathLike[str]] = (), *, entry_points: bool = True
                  ) -> Registry:
    """Build the registry: entry points of group ``sbn_bench.estimators``, then plugin files.

    When the package runs from a source tree without being installed, its entry points are
    absent; the built-ins are then registered from :mod:`sbn_bench.estimators.builtin` directly.
    """
    plugins = plugin_paths(plugins)
    reg = Registry()
    if entry_points:
        for ep in _entry_points():
            origin = f"entry point {ep.name} = {ep.value}"
            try:
                factory = ep.load()
            except Exception as e:
                reg.errors.append(PluginError(ep.name, origin, f"failed to load: "
                                                               f"{type(e).__name__}: {e}"))
                continue
            reg.add(ep.name, factory, origin)
    for name, factory in builtin.BUILTINS.items():
        if name not in reg.factories and not any(e.name == name for e in reg.errors):
            reg.add(name, factory, f"built-in {builtin.__name__}.{factory.__name__}")
    for p in plugins:
        try:
            load_plugin_file(reg, p)
        except (PluginFileError, ContractError) as e:
            reg.errors.append(PluginError(Path(p).stem, f"plugin file {str(p)!r}", str(e),
                                          whole_file=True))
    return reg


def load_plugins(plugins: Sequence[str | os.PathLike[str]], requested: Iterable[str] = ()
                 ) -> tuple[Registry, list[str]]:
    """The registry with ``plugins`` loaded, for a command that names them explicitly (``sbn-bench
    run`` and ``train``).

    A plugin file that cannot be loaded at all (missing, fails to import, no ``ESTIMATORS`` dict)
    is an error before any work: the user asked for it. So is a plugin estimator named like an
    estimator already registered (a built-in) when that name is requested: the run would silently
    measure the other one. A loadable file's broken factories are only warnings (returned, one line
    each, for the names not in ``requested``); requesting one is an error of
    :meth:`Registry.create`, which says why it failed to load.

    Raises:
        PluginFileError: naming each plugin file that cannot be loaded and why.
    """
    plugins = plugin_paths(plugins)
    reg = load_registry(plugins)
    file_of = {f"plugin file {str(p)!r}": str(p) for p in plugins}
    origins = set(file_of)
    fatal = [e for e in reg.errors if e.whole_file and e.origin in origins]
    if fatal:
        raise PluginFileError("; ".join(e.message for e in fatal), argument="plugins",
                              value=file_of[fatal[0].origin],
                              expected="a Python file defining ESTIMATORS = {name: factory}")
    asked = set(requested)
    clashes = [e for e in reg.errors if e.clash and e.origin in origins and e.name in asked]
    if clashes:
        e = clashes[0]
        raise PluginFileError(f"{e.origin} defines estimator {e.name!r}, a name already registered "
                              f"by {reg.origins[e.name]}; the run would measure the latter: rename "
                              "the plugin's estimator (its ESTIMATORS key and Estimator name)",
                              argument="plugins", value=file_of[e.origin],
                              expected="an estimator name of its own")
    warnings = [f"plugin estimator {e.name!r} was not loaded ({e.origin}): {e.message}"
                for e in reg.errors if e.origin in origins and e.name not in asked]
    return reg, warnings
