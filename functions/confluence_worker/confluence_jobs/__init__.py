"""The jobs this worker runs: one module per job, each registering its function with ``@job``.

To add a job, drop a module in this folder (see README, "Write your own job"): the worker imports
every module here at cold start (``worker_handler(jobs="confluence_jobs")``), so there is no import
list to edit, and the cold start grows by exactly the jobs it ships.
"""
