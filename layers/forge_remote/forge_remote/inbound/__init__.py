"""Inbound HTTP: the FIT middleware and error answers, the per-container wiring, UI calls."""
