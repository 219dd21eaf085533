"""Install the catalog's hooks: wrap each target in place so that calling it opens a span.

Works on plain functions, methods, classmethods, staticmethods, async functions and sync/async
generators. A target whose module is not imported yet is hooked right after its module is
imported (a post-import hook on sys.meta_path), so installing for vLLM in the API-server
process does not import the GPU model runner. Installing twice is a no-op; `uninstall()`
puts every original back, including module-level functions rebound by `from m import f`.
"""
from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

from tracer.catalog.hops import CARRIER, Catalog, Target, load_catalog
from tracer.instrument.hop_call import HopCall, Inject
from tracer.instrument.wrappers import MARKER, make_carrier_wrapper, make_wrapper

logger = logging.getLogger(__name__)



class HookError(RuntimeError):
    """A target could not be resolved or wrapped."""


@dataclass
class Patch:
    target: Target
    owner: Any  # the class or module holding the attribute
    attribute: str
    original: Any  # the raw attribute (classmethod/staticmethod objects included)
    wrapper: Any


@dataclass
class InstallReport:
    installed: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # hooked when their module is imported
    failed: dict[str, str] = field(default_factory=dict)


_lock = threading.RLock()
_patches: dict[str, Patch] = {}
_deferred: dict[str, list[HopCall]] = {}  # module name -> calls waiting for it
_targets: dict[str, Target] = {}


# -- resolution and patching ------------------------------------------------------------------


def _resolve_owner(module: types.ModuleType, qualname: str) -> tuple[Any, str, Any]:
    *path, attribute = qualname.split(".")
    owner: Any = module
    for name in path:
        try:
            owner = getattr(owner, name)
        except AttributeError:
            raise HookError(f"{module.__name__} has no {name!r} (looking for {qualname})") from None
    raw = owner.__dict__.get(attribute) if isinstance(owner, type) else getattr(owner, attribute, None)
    if raw is None:
        where = "a base class" if isinstance(owner, type) and hasattr(owner, attribute) else "nowhere"
        raise HookError(f"{qualname} is not defined on {getattr(owner, '__name__', owner)} (found on {where})")
    return owner, attribute, raw


def _install_one(target: Target, call: HopCall, module: types.ModuleType) -> None:
    if target.spec in _patches:
        return
    owner, attribute, raw = _resolve_owner(module, target.qualname)
    if getattr(raw, MARKER, None) or getattr(getattr(raw, "__func__", None), MARKER, None):
        return  # already wrapped (by an earlier session of this process)
    wrap = make_carrier_wrapper if call.hop == CARRIER else make_wrapper
    if isinstance(raw, (classmethod, staticmethod)):
        wrapper: Any = type(raw)(wrap(raw.__func__, call))
    elif callable(raw) and not isinstance(raw, type):
        wrapper = wrap(raw, call)
    else:
        raise HookError(f"{target.spec} is not a function (it is {type(raw).__name__})")
    setattr(owner, attribute, wrapper)
    if isinstance(owner, types.ModuleType):
        # `from m import f` elsewhere copied the old function: rebind those names too.
        for other in list(sys.modules.values()):
            if other is owner or not isinstance(other, types.ModuleType):
                continue
            try:
                names = [name for name, value in vars(other).items() if value is raw]
            except TypeError:
                continue
            for name in names:
                setattr(other, name, wrapper)
    _patches[target.spec] = Patch(target, owner, attribute, raw, wrapper)


def _hop_call(catalog: Catalog, target: Target, extractors: dict | None) -> HopCall:
    from tracer.instrument.extractors import carrier_for, drop_if_for, extractors_for, skip_if_for

    if target.hop == CARRIER:  # no span: the wrapper only puts the trace context on what the call sends
        carry = (extractors or {}).get(target.spec) if extractors is not None else carrier_for(target.engine, target.spec)
        if carry is None:
            raise ImportError(f"the {target.engine} extractors have no CARRY entry for {target.spec}")
        return HopCall(CARRIER, target.engine, CARRIER, target.spec, inject=Inject(carry, before=True))
    hop = catalog.hop(target.hop)
    inject = drop_if = skip_if = None
    if extractors is not None:
        before, after, *rest = extractors.get(target.hop, (None, None))
        inject = rest[0] if rest else None
    else:
        before, after, inject = extractors_for(target.engine, target.hop)
        drop_if = drop_if_for(target.engine, target.hop)
        skip_if = skip_if_for(target.engine, target.hop)
    if inject is not None and not isinstance(inject, Inject):
        inject = Inject(inject)
    return HopCall(target.hop, target.engine, hop.scope, target.spec, before, after, hop.cuda_timed, hop.roles, inject,
                   target.part_of_step, target.mode, drop_if, skip_if)


def install(
    engine: str,
    catalog: Catalog | None = None,
    hops: list[str] | None = None,
    import_modules: bool = False,
    extractors: dict[str, tuple] | None = None,
) -> InstallReport:
    """Hook every target of `engine` (or only `hops`). Modules not imported yet are hooked on
    import, unless import_modules: then they are imported now (a module that fails to import
    is reported in `failed`). `extractors` ({hop: (before, after[, inject])}) replaces the engine's
    extractor module (tracer/instrument/extractors/<engine>.py)."""
    catalog = catalog or load_catalog()
    report = InstallReport()
    with _lock:
        carriers = list(catalog.carriers.get(engine, ())) if hops is None else []
        for target in catalog.targets(engine) + carriers:
            if hops is not None and target.hop not in hops:
                continue
            _targets[target.spec] = target
            if target.spec in _patches:
                report.installed.append(target.spec)
                continue
            try:
                call = _hop_call(catalog, target, extractors)
            except ImportError as exc:  # an engine in the catalog without an extractor module
                report.failed[target.spec] = f"no extractors for {target.engine}: {exc}"
                continue
            module = sys.modules.get(target.module)
            if module is None and import_modules:
                try:
                    module = importlib.import_module(target.module)
                except Exception as exc:  # a missing optional module must not stop the rest
                    report.failed[target.spec] = f"import failed: {type(exc).__name__}: {exc}"
                    continue
            if module is None:
                _deferred.setdefault(target.module, []).append(call)
                report.deferred.append(target.spec)
                continue
            try:
                _install_one(target, call, module)
                report.installed.append(target.spec)
            except HookError as exc:
                report.failed[target.spec] = str(exc)
        if _deferred:
            _ensure_finder()
    for spec, reason in report.failed.items():
        logger.warning("servetrace: not hooking %s: %s", spec, reason)
    return report


def _on_module_imported(name: str, module: types.ModuleType) -> None:
    with _lock:
        calls = _deferred.pop(name, [])
        for call in calls:
            target = _targets[call.target]
            try:
                _install_one(target, call, module)
            except HookError as exc:
                logger.warning("servetrace: not hooking %s: %s", call.target, exc)
        if not _deferred:
            _remove_finder()


def uninstall(engine: str | None = None) -> int:
    """Restore the originals (of one engine, or all); returns how many were restored."""
    restored = 0
    with _lock:
        for spec in list(_patches):
            patch = _patches[spec]
            if engine is not None and patch.target.engine != engine:
                continue
            current = patch.owner.__dict__.get(patch.attribute) if isinstance(patch.owner, type) else getattr(patch.owner, patch.attribute, None)
            if current is patch.wrapper:
                setattr(patch.owner, patch.attribute, patch.original)
            else:
                logger.warning("servetrace: %s was re-patched by someone else; leaving it", spec)
            if isinstance(patch.owner, types.ModuleType):
                # Modules imported after install copied the wrapper with `from m import f`.
                for module in list(sys.modules.values()):
                    if not isinstance(module, types.ModuleType):
                        continue
                    try:
                        names = [name for name, value in vars(module).items() if value is patch.wrapper]
                    except TypeError:
                        continue
                    for name in names:
                        setattr(module, name, patch.original)
            del _patches[spec]
            restored += 1
        for module_name in list(_deferred):
            kept = [c for c in _deferred[module_name] if engine is not None and c.engine != engine]
            if kept:
                _deferred[module_name] = kept
            else:
                del _deferred[module_name]
        if not _deferred:
            _remove_finder()
    return restored


def installed(engine: str | None = None) -> list[str]:
    return [spec for spec, patch in _patches.items() if engine is None or patch.target.engine == engine]


def deferred() -> list[str]:
    return [call.target for calls in _deferred.values() for call in calls]


# -- post-import hook ---------------------------------------------------------------------------


class _LoaderProxy(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            _on_module_imported(module.__name__, module)
        except Exception:  # the import itself succeeded: never fail it because of tracing
            logger.warning("servetrace: hooking %s after import failed", module.__name__, exc_info=True)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _deferred:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderProxy(spec.loader)
                return spec
        return None


_finder: _PostImportFinder | None = None


def _ensure_finder() -> None:
    global _finder
    if _finder is None:
        _finder = _PostImportFinder()
        sys.meta_path.insert(0, _finder)


def _remove_finder() -> None:
    global _finder
    if _finder is not None:
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
        _finder = None
