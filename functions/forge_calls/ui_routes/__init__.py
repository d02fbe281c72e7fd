"""The UI routes (``/api/...``): every module in this package that defines ``router`` is served.

To add routes, drop a module here with a Powertools ``Router`` named ``router`` (see README, "Write
your own route"): there is no list to edit. A route reads the verified call and its Confluence
clients with ``ui_call(router)``, and its inputs, validated against its ``@accepts``, as
``ui_call(router).inputs`` (``forge_remote.inbound.ui_calls``); a route without ``@accepts`` takes none.
"""

import importlib
import pkgutil

from aws_lambda_powertools.event_handler.api_gateway import Router


def _routers() -> tuple[Router, ...]:
    """Every module's ``router``, in module name order (so the route table is the same on every start)."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, Router):
            found.append(router)
    return tuple(found)


ROUTERS = _routers()

__all__ = ["ROUTERS"]
