"""What ``LocalRuntime.reload_changed`` is built from: source snapshots, which modules a function owns,
purging and restoring ``sys.modules``, the job registry, and one-line failure reports.

A running ``make local`` imported each function's module once. A file added, changed or removed under a
function's folder (or the library's) is then seen only by a reload that imports it afresh, as a Lambda
container started after a deploy would: the function's own modules (``confluence_jobs``, ``ui_routes``,
any other top-level module in its folder) forgotten first, and for a library change every
``forge_remote`` module but those whose state is the whole stack's (``KEPT_LIBRARY_MODULES``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import forge_remote

if TYPE_CHECKING:
    from forge_remote.jobs.contract import Job, JobRegistry

LIBRARY_DIR = Path(forge_remote.__file__).resolve().parent
# Never purged: their state is the stack's, not one container's. ``clock`` is the stack clock that
# ``LocalRuntime.advance``, the emulators and the journal read and move; ``aws`` is the boto3 client cache
# that ``load_handler`` and ``stop()`` reset; the package itself only loads the others lazily.
KEPT_LIBRARY_MODULES = frozenset({"forge_remote", "forge_remote.clock", "forge_remote.aws"})
MAX_MESSAGE_CHARS = 300  # a report is one line: an exception's message can quote a whole file path or more

Signature = tuple[int, int]  # (st_mtime_ns, st_size): changes with every save, even one of the same size
Owns = Callable[[str, object], bool]  # (module name, module) -> whether it is part of what is reloaded


# -- what changed
def scan(folders: Iterable[Path]) -> dict[Path, Signature]:
    """Every ``*.py`` file under ``folders`` (``__pycache__`` and dot-entries skipped: editors' temporaries)."""
    found: dict[Path, Signature] = {}
    for folder in folders:
        for directory, subdirectories, files in os.walk(folder):
            subdirectories[:] = [d for d in subdirectories if d != "__pycache__" and not d.startswith(".")]
            for name in files:
                if not name.endswith(".py") or name.startswith("."):
                    continue
                path = Path(directory, name)
                try:
                    stat = path.stat()
                except OSError:
                    continue  # removed while we looked: the next scan says so
                found[path] = (stat.st_mtime_ns, stat.st_size)
    return found


class SourceWatcher:
    """Snapshots of the files under ``folders``; ``changes()`` names what was added, changed or removed."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.folders = tuple(folders)
        self.snapshot = scan(self.folders)  # the files as the loaded modules were read

    def changes(self) -> set[Path]:
        """The files that differ from the last snapshot, which this one replaces."""
        current = scan(self.folders)
        changed = {
            path for path in current.keys() | self.snapshot.keys() if current.get(path) != self.snapshot.get(path)
        }
        self.snapshot = current
        return changed


def forget_bytecode(paths: Iterable[Path]) -> None:
    """Remove the cached bytecode of ``paths``: a ``.pyc`` is trusted while the source's whole-second mtime
    and size match, so a same-size edit within the same second would otherwise be imported stale."""
    for path in paths:
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)


# -- which modules are whose
def top_level_names(folder: Path) -> frozenset[str]:
    """Top-level modules and packages in a function's folder (``app`` aside: it is loaded under its own name)."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            if entry.is_dir() and entry.name.isidentifier():
                names.add(entry.name)  # a package, or a namespace package
            elif entry.suffix == ".py" and entry.stem.isidentifier() and entry.stem != "app":
                names.add(entry.stem)
    return frozenset(names)


def _module_files(module: object) -> list[str]:
    """Where a module came from: its file and, for a package, its folders (a namespace package has no file)."""
    try:
        file = getattr(module, "__file__", None)
        files = [file] if isinstance(file, str) else []
        files += [str(entry) for entry in getattr(module, "__path__", None) or ()]
    except Exception:  # a lazy module object in sys.modules may fail any attribute access
        return []
    return files


def function_modules(folder: Path, code_uri: str, handler_module: str) -> Owns:
    """What a function's container imports from its folder: its handler module, any module loaded from a
    file under the folder (one since removed included), and its top-level names (``confluence_jobs``) when
    loaded from the same function's folder in another copy of the repository (a test's, the real one)."""
    prefixes = tuple({f"{folder}{os.sep}", f"{folder.resolve()}{os.sep}"})
    same_function = f"{os.sep}{code_uri.strip('/').replace('/', os.sep)}{os.sep}"
    names = top_level_names(folder)

    def owns(name: str, module: object) -> bool:
        if name == handler_module:
            return True
        files = _module_files(module)
        if any(file.startswith(prefixes) for file in files):
            return True
        return name.partition(".")[0] in names and any(same_function in file for file in files)

    return owns


def library_modules(name: str, module: object) -> bool:
    """The library's modules a library change imports afresh."""
    return name.startswith("forge_remote.") and name not in KEPT_LIBRARY_MODULES


def kept_library_files() -> frozenset[Path]:
    """The files of ``KEPT_LIBRARY_MODULES``: a change there takes a restart (a reload keeps them)."""
    files = (getattr(sys.modules.get(name), "__file__", None) for name in KEPT_LIBRARY_MODULES)
    return frozenset(Path(file).resolve() for file in files if isinstance(file, str))


def any_of(owners: Sequence[Owns]) -> Owns:
    def owns(name: str, module: object) -> bool:
        return any(one(name, module) for one in owners)

    return owns


# -- sys.modules
def purge_modules(owns: Owns) -> dict[str, Any]:
    """Forget the modules ``owns`` names, so the next import reads their files again; returns them."""
    removed = {name: module for name, module in list(sys.modules.items()) if owns(name, module)}
    for name in removed:
        sys.modules.pop(name, None)
    _sync_parents(removed)
    return removed


def restore_modules(saved: Mapping[str, Any], owns: Owns) -> None:
    """``sys.modules`` as in ``saved`` for every module ``owns`` names: newer ones dropped, older put back."""
    current = {name for name, module in list(sys.modules.items()) if owns(name, module)}
    wanted = {name: module for name, module in saved.items() if owns(name, module)}
    for name in current - wanted.keys():
        sys.modules.pop(name, None)
    sys.modules.update(wanted)
    _sync_parents(current | wanted.keys())


def _sync_parents(names: Iterable[str]) -> None:
    """A package keeps its submodules as attributes: ``from forge_remote import errors`` reads the attribute
    before ``sys.modules``, so a purged or restored submodule must be the one its parent names."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name) if parent_name else None
        if not isinstance(parent, ModuleType):
            continue
        module = sys.modules.get(name)
        if module is not None:
            setattr(parent, child, module)
        elif getattr(getattr(parent, child, None), "__name__", None) == name:
            delattr(parent, child)


# -- the job registry
def job_registry() -> JobRegistry | None:
    """The registry ``@job`` adds to now (a library reload makes a new one)."""
    registry: JobRegistry | None = getattr(sys.modules.get("forge_remote.jobs.contract"), "JOBS", None)
    return registry


def drop_jobs(modules: Collection[str]) -> None:
    """Forget the jobs defined in ``modules``, which are about to be imported afresh: what they register then
    is all there is (a removed job gone, a moved one not "already registered")."""
    registry = job_registry()
    if registry is None:
        return
    for name, job in list(registry._jobs.items()):
        if getattr(job.run, "__module__", None) in modules:
            del registry._jobs[name]


@dataclass(frozen=True)
class RegistryState:
    """The registry's jobs at one moment, to put back after a failed import."""

    registry: JobRegistry | None
    jobs: dict[str, Job[Any]]

    @classmethod
    def capture(cls) -> RegistryState:
        registry = job_registry()
        return cls(registry, dict(registry._jobs) if registry is not None else {})

    def restore(self) -> None:
        if self.registry is not None:
            self.registry._jobs.clear()
            self.registry._jobs.update(self.jobs)


@dataclass(frozen=True)
class ImportState:
    """What a runtime changes in the process by importing functions afresh: ``sys.modules``, ``sys.path``
    and the job registry, as they were before it started."""

    modules: dict[str, Any]
    path: list[str]
    registry: RegistryState

    @classmethod
    def capture(cls) -> ImportState:
        importlib.import_module("forge_remote.jobs.contract")  # the registry the worker will fill
        return cls(modules=dict(sys.modules), path=list(sys.path), registry=RegistryState.capture())

    def restore(self, owns: Owns) -> None:
        restore_modules(self.modules, owns)
        sys.path[:] = self.path
        self.registry.restore()


# -- reports
def failure_location(error: BaseException, prefer: Collection[Path], roots: Sequence[Path]) -> tuple[Path, int] | None:
    """Where ``error`` comes from, as a developer would look: the deepest frame in a file that just changed,
    else in a function's or the library's files, else the deepest frame at all."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        return Path(error.filename), error.lineno  # the file that did not compile is on no frame
    frames = [
        (Path(frame.filename), frame.lineno or 0)
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<")  # importlib's frozen frames
    ]
    preferred = {path.resolve() for path in prefer}
    resolved_roots = [root.resolve() for root in roots]
    tests: list[Callable[[Path], bool]] = [
        lambda path: path in preferred,
        lambda path: any(path.is_relative_to(root) for root in resolved_roots),
    ]
    for test in tests:
        for path, line in reversed(frames):
            if test(path.resolve()):
                return path, line
    return frames[-1] if frames else None


def describe_failure(
    error: BaseException, *, prefer: Collection[Path], roots: Sequence[Path], shown: Callable[[Path], str]
) -> str:
    """``file:line: Type: message`` on one line (no traceback: the file and line say where to look)."""
    message = error.msg if isinstance(error, SyntaxError) and error.msg else str(error)
    message = " ".join(message.split())
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    where = failure_location(error, prefer, roots)
    return f"{shown(where[0])}:{where[1]}: {text}" if where else text


def files_text(paths: Collection[Path], shown: Callable[[Path], str], most: int = 3) -> str:
    """``a.py, b.py and 2 more``: the files a reload line names."""
    names = sorted(shown(path) for path in paths)
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"
