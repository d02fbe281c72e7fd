"""UI routes (``/api/...``), called by the Forge app's UI through ``invokeRemote``: this app's configuration.

The FIT checks, token capture, input validation and error answers are the library's
(``forge_remote.inbound.ui``). What is this app's: its routes (every module in ``ui_routes/`` with a
``router``) and the jobs a site administrator may request from the UI (``POST /api/jobs``).
"""

from forge_remote import ui_handler

# The jobs POST /api/jobs may request; the worker validates their arguments.
REQUESTABLE_JOBS = ("space-digest", "page-snapshot")

lambda_handler = ui_handler(routes="ui_routes", requestable_jobs=REQUESTABLE_JOBS)
