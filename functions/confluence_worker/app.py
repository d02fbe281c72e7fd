"""The Confluence worker: job requests from SQS, run with a token that is still valid.

Every module in ``confluence_jobs/`` is imported at cold start and registers its ``@job`` functions.
What happens to a request on each receive (done, deferred and parked, dead-lettered with its reason)
is the library's policy: ``forge_remote.jobs.worker``.
"""

from forge_remote import worker_handler

lambda_handler = worker_handler(jobs="confluence_jobs")
