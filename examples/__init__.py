"""Runnable examples; each one is run by a test (see docs/producers.md)."""
