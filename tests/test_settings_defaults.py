"""One default per option (issue 26): a library function that takes an option's value defaults to the settings'.

Why: `cli.py` takes its defaults from the settings dataclasses, Python callers
from the functions' signatures; when the two disagree (sink_factor was 0.0 in
three functions and 20.0 in the settings), the same experiment gives other
numbers from a notebook than from the command line, silently. The walk finds
every public function that shares at least three parameters with a settings
dataclass (the one it shares most with; a function that takes the settings
object itself is its own case) and compares the defaults of what they share. None in a function
(on either side) means "the other one decides" and is allowed.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

PACKAGES = ("common", "activations", "sae", "explain", "causal", "report", "pipeline")
MIN_SHARED = 3


def _walk():
    settings, functions = {}, {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if getattr(obj, "__module__", None) != module.__name__ or name.startswith("_"):
                    continue
                if isinstance(obj, type) and dataclasses.is_dataclass(obj) and \
                        any("option" in f.metadata for f in dataclasses.fields(obj)):
                    settings[f"{module.__name__}.{name}"] = obj
                elif inspect.isfunction(obj):
                    functions[f"{module.__name__}.{name}"] = obj
    return settings, functions


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _disagreements() -> tuple[list[str], int]:
    settings, functions = _walk()
    found, pairs = [], 0
    for fname, fn in sorted(functions.items()):
        signature = inspect.signature(fn).parameters
        if "settings" in signature:  # it takes the settings object itself: its other parameters are its own
            continue
        params = {n: p.default for n, p in signature.items() if p.default is not inspect.Parameter.empty}
        best, best_shared = None, []
        for sname, cls in sorted(settings.items()):  # the settings class the function is the library form of
            fields = {f.name: _default(f) for f in dataclasses.fields(cls)}
            shared = [n for n in params if n in fields and fields[n] is not dataclasses.MISSING]
            if len(shared) > len(best_shared):
                best, best_shared = (sname, fields), shared
        if best is None or len(best_shared) < MIN_SHARED:
            continue
        pairs += 1
        sname, fields = best
        found += [f"{fname}({n}={params[n]!r}) but {sname}.{n} = {fields[n]!r}" for n in best_shared
                  if params[n] is not None and fields[n] is not None and not _same(params[n], fields[n])]
    return found, pairs


def test_library_functions_default_to_the_settings_values():
    found, pairs = _disagreements()
    assert pairs >= 4  # cache_activations, evaluate_dictionaries, fit_baselines_from_cache, split_cache at least
    assert found == []


def test_the_walk_sees_a_disagreeing_default(monkeypatch):
    """The check could pass by pairing nothing: a changed default in a known pair must be reported."""
    from activations import cache_writer

    real = cache_writer.cache_activations

    def changed(model: str = "default", corpus: str = "default", hooks=(), context_length: int = 64,
                max_tokens: int = 1_000_000, batch_size: int = 32):
        return real

    changed.__module__ = cache_writer.__name__
    monkeypatch.setattr(cache_writer, "cache_activations", changed)
    found, _ = _disagreements()
    assert any("cache_activations(context_length=64)" in line for line in found)
