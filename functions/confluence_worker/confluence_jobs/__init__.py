"""The jobs this worker can run. To add one: write a module here with a function decorated by
``@registry.job("your-job", parse_args)``, and import it below. See README, "Write your own job"."""

from forge_remote.jobs import JobRegistry

registry = JobRegistry()

# Importing a job module registers its jobs.
from confluence_jobs import page_snapshot, space_digest  # noqa: E402

__all__ = ["page_snapshot", "registry", "space_digest"]
