"""Tokens: the store (newest wins, never an expired one out), a job's lease, offline user tokens."""
