"""The app table: its keys, the installation registry, job results, batch deletes, idempotency."""
