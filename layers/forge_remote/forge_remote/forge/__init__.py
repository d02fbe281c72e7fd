"""Forge invocations: the FIT, its signing keys, which call a route accepts, event bodies."""
