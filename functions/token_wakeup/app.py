"""Token wake-up: a stored app token wakes the installation's parked jobs (the tokens table's stream).

What it checks and wakes is the library's (``forge_remote.jobs.wakeup``).
"""

from forge_remote import wakeup_handler

lambda_handler = wakeup_handler()
