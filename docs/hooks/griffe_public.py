"""Griffe extension for the API reference (loaded by mkdocstrings, see ``mkdocs.yml``).

1. Some functions are made at import time: the module-level functions of ``analytics_vitally`` and
   ``analytics_vitally.segment`` (``track = _proxy(Client.track)``) and ``AsyncClient``'s message
   methods (``track = _coroutine(Client.track)``). Static analysis sees attributes there; each is
   replaced by the function as inspected at run time, with its real signature and docstring.
2. Docstrings keep the indentation they were written with: griffe dedents each one by its
   least-indented line, so in a docstring holding a summary and an indented example only, the
   example would lose its indentation and read as a paragraph instead of code.
3. Every public name (the ``__all__`` of the public modules) and every public method or property of
   a public class must have a docstring: one without is a warning, which fails
   ``mkdocs build --strict``. (Plain data attributes are described by their class's docstring.)
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
from typing import Any, Dict, Iterator, Optional, Set, Tuple

import griffe

PUBLIC_MODULES = (
    "analytics_vitally",
    "analytics_vitally.aio",
    "analytics_vitally.errors",
    "analytics_vitally.testing",
    "analytics_vitally.importer",
    "analytics_vitally.segment",
    "analytics_vitally.diagnosis",  # `doctor` and its report, when present
)
"""Modules whose ``__all__`` is public API; tests/test_docs.py demands each name in the reference."""

MADE_AT_IMPORT = ("analytics_vitally", "analytics_vitally.segment", "analytics_vitally.aio.AsyncClient")
"""Modules and classes whose functions are made at import time, so read by inspection."""

log = logging.getLogger("mkdocs.plugins.griffe_public")


class PublicAPI(griffe.Extension):
    def __init__(self) -> None:
        super().__init__()
        self._done: Set[int] = set()

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Griffe 2 calls this once the package is loaded."""
        if pkg.path != "analytics_vitally" or id(pkg) in self._done:
            return
        self._done.add(id(pkg))
        written = _keep_indentation(pkg)
        for path in MADE_AT_IMPORT:
            _inspect_made_functions(pkg, path, written)
        checked: Set[str] = set()
        for path in PUBLIC_MODULES:
            module = _member(pkg, path)
            if module is None or module.is_alias or not module.is_module:
                continue  # a module not written (yet)
            try:
                runtime = importlib.import_module(path)
            except ImportError as error:
                log.warning("%s cannot be imported to read its __all__: %r", path, error)
                continue
            for name in getattr(runtime, "__all__", ()):
                if name not in module.members:
                    log.warning("%s.%s is in __all__ but griffe does not find it", path, name)
                    continue
                _check(module.members[name], f"{path}.{name}", checked)

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Griffe 1 calls this (griffe 2 calls ``on_package``)."""
        self.on_package(pkg=pkg, **kwargs)


def _member(pkg: griffe.Module, path: str) -> Any:
    found: Any = pkg
    for part in path.split(".")[1:]:
        if part not in found.members:
            return None
        found = found.members[part]
    return found


def _runtime(path: str) -> Tuple[str, Any]:
    """The module that defines ``path`` (a module or a class in one), and the object at ``path``."""
    try:
        return path, importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        return module, getattr(importlib.import_module(module), name)


def _objects(obj: Any) -> Iterator[Any]:
    """``obj`` and everything defined in it (not what it imports)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


def _as_written(docstring: Any) -> Optional[str]:
    """The docstring with the indentation of its source relative to its opening quotes, or None."""
    try:
        source = docstring.source
        value = ast.literal_eval(source.strip())
    except (ValueError, SyntaxError):  # no source lines, or more than the literal on them
        return None
    if not isinstance(value, str):
        return None
    margin = len(source) - len(source.lstrip())
    first, *rest = value.expandtabs().split("\n")
    lines = [first.strip()] + [line[margin:] if not line[:margin].strip() else line.strip() for line in rest]
    return "\n".join(lines).strip()


def _keep_indentation(pkg: griffe.Module) -> Dict[str, str]:
    """Give every docstring of the package the indentation it was written with; returns
    ``{value as griffe read it: value as written}``, to match docstrings copied at run time."""
    written: Dict[str, str] = {}
    for obj in _objects(pkg):
        if obj.docstring is None or "\n" not in obj.docstring.value.strip():
            continue
        restored = _as_written(obj.docstring)
        if restored is not None and restored != obj.docstring.value:
            written[obj.docstring.value] = restored
            obj.docstring.value = restored
    return written


def _inspect_made_functions(pkg: griffe.Module, path: str, written: Dict[str, str]) -> None:
    static = _member(pkg, path)
    module_path, runtime = _runtime(path)
    inspected: Any = None
    for name, member in list(static.members.items()):
        if member.is_alias or not member.is_attribute or name.startswith("_"):
            continue
        if inspect.isfunction(getattr(runtime, name, None)):
            if inspected is None:
                inspected = griffe.inspect(module_path, filepath=_member(pkg, module_path).filepath)
                inspected = inspected[path[len(module_path) + 1 :]] if path != module_path else inspected
            function = inspected[name]
            if function.is_alias:  # functools.wraps made it look defined elsewhere: copy that definition
                function = _copy(_member(pkg, function.target_path), name, getattr(runtime, name))
            elif function.docstring is not None:  # a copy of a method's docstring, edited or not
                _restore_copied(function.docstring, written)
            function.lineno, function.endlineno = member.lineno, member.endlineno
            static.set_member(name, function)


def _restore_copied(docstring: Any, written: Dict[str, str]) -> None:
    """A docstring copied at run time (as it is, or with ``client.`` made ``analytics.``) gets its
    original's indentation."""
    for read, restored in written.items():
        for old, new in (("", ""), ("client.", "analytics.")):
            if docstring.value == read.replace(old, new):
                docstring.value = restored.replace(old, new)
                return


def _copy(original: griffe.Function, name: str, runtime: Any) -> griffe.Function:
    parameters = griffe.Parameters(
        *(
            griffe.Parameter(p.name, annotation=p.annotation, kind=p.kind, default=p.default)
            for p in original.parameters
        )
    )
    docstring = original.docstring.value if original.docstring else None
    copied = griffe.Function(name, parameters=parameters, returns=original.returns)
    if docstring:
        copied.docstring = griffe.Docstring(docstring, parent=copied)
        copied.docstring.value = docstring  # as it is: Docstring() would dedent it again
    copied.labels = set(original.labels) | ({"async"} if inspect.iscoroutinefunction(runtime) else set())
    return copied


def _documented(obj: Any) -> bool:
    return bool(obj.docstring and obj.docstring.value.strip())


def _check(obj: Any, shown: str, checked: Set[str]) -> None:
    target = obj
    if obj.is_alias:
        try:
            target = obj.final_target
        except griffe.AliasResolutionError:
            log.warning("%s: griffe cannot find its definition", shown)
            return
    if target.path in checked or target.is_module:
        return  # said once; a module's docstring is its page's business
    checked.add(target.path)
    if not _documented(target):
        log.warning("%s has no docstring: the API reference would show nothing for it", shown)
    if target.is_class:
        for name, member in _callables(target):
            if not _documented(member):
                log.warning("%s.%s has no docstring: the API reference would show nothing for it", shown, name)


def _callables(cls: Any) -> Iterator[Tuple[str, Any]]:
    """The public methods and properties of ``cls`` (its own, not inherited)."""
    for name, member in cls.members.items():
        if name.startswith("_") or member.is_alias:
            continue
        if member.is_function or (member.is_attribute and "property" in member.labels):
            yield name, member
