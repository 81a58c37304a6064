"""Simulated outside world for tests and demos: markets, terminals, devices."""
