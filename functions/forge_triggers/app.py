"""Forge trigger routes (lifecycle, uninstall, product events, keepalive): this app's configuration.

The routes, the FIT checks, token capture and the uninstall cleanup are the library's
(``forge_remote.inbound.triggers``). What is this app's: which product event requests which job.
"""

from forge_remote import triggers_handler

# Product event type -> the job it requests. A job name takes the event's page as its arguments
# ({"pageId", "spaceKey", "version"}); a function (ForgeEvent) -> (job, args) | None can choose its own.
# The manifest's trigger (forge-app/manifest.yml, "page-events") must subscribe to these events.
EVENTS = {
    "avi:confluence:created:page": "page-snapshot",
    "avi:confluence:updated:page": "page-snapshot",
}

lambda_handler = triggers_handler(events=EVENTS)
