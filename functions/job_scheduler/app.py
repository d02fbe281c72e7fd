"""The job scheduler: on an EventBridge Scheduler schedule, one job request per active installation, or a task.

The schedule's input says which (``template.yaml``'s schedules): ``{"job": <name>, "args": {...},
"spreadMinutes": N}`` (the requests spread over N minutes, each installation at a stable slot),
``{"task": "cleanup-sweep"}`` or ``{"task": "token-census"}``; what each does is the library's
(``forge_remote.jobs.scheduler``).
"""

from forge_remote import scheduler_handler

lambda_handler = scheduler_handler()
