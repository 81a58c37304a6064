"""Operator harnesses, each run as ``python -m bench.NAME --json PATH``."""
