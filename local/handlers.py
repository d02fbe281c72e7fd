"""Load the real handler modules (``functions/<name>/app.py``) the way Lambda does, one per function.

Every function's module is called ``app``, so each is loaded from its path under a unique name, with
its own environment from ``template.yaml`` applied first (modules read settings at import, as on Lambda).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def handler_module_name(logical_id: str) -> str:
    """The name ``load_handler`` gives a function's ``app.py`` in ``sys.modules``."""
    return f"handler_{logical_id}"


def load_handler(logical_id: str, code_uri: str, environment: Mapping[str, str], *, root: Path = ROOT) -> Any:
    """Import ``<root>/<code_uri>/app.py`` fresh under ``handler_<logical_id>`` with ``environment`` set, and
    return its ``lambda_handler``: the library's handler object (``forge_remote.handler``), which is
    what Lambda calls and holds the function's parts (``.runner``, ``.app``, ``.wiring``).

    ``root``: where the template's ``CodeUri`` folders are (the repository, or a copy of its functions).
    """
    os.environ.update(environment)
    from forge_remote import aws

    aws.reset_clients()  # a new endpoint or moto mock may be in force
    name = handler_module_name(logical_id)
    path = root / code_uri / "app.py"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # Lambda puts the function's folder on the path
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.lambda_handler
