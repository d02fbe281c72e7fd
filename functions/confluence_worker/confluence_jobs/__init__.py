"""The jobs this worker can run: every module in this package is imported here, and importing a module
registers the functions it decorates with ``@registry.job("your-job", parse_args)``.

To add a job, drop a module in this folder (see README, "Write your own job"): there is no import
list to edit. Only this package's own modules are imported, so the worker's cold start grows by
exactly the jobs it ships.
"""

import importlib
import pkgutil

from forge_remote.jobs.contract import JobRegistry

# Defined before the job modules are imported: each of them does `from confluence_jobs import registry`.
registry = JobRegistry()


def _import_job_modules() -> tuple[str, ...]:
    """Import every module (and subpackage) of this package, in name order so registration is repeatable."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return tuple(names)


JOB_MODULES = _import_job_modules()

__all__ = ["JOB_MODULES", "registry"]
