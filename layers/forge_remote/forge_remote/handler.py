"""What every handler factory returns: the function's Lambda handler, with its parts as attributes.

``lambda_handler = worker_handler(jobs="my_jobs")`` is all a function's ``app.py`` needs: Lambda calls
the object as it would a function, and tests and the local stack reach its parts (``.runner``,
``.app``, ``.wiring``) without a module-level global for each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


class LambdaHandler:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        return self._handler(event, context)

    def lambda_handler(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """The same call, by the name Lambda's ``Handler: app.lambda_handler`` gives it."""
        return self._handler(event, context)
