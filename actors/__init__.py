"""Thin trio drivers around ``engine/``: one actor per device, per user and per symbol.

Actors receive, feed the core, carry out its effects and report failures back to it. They hold
no business rule.
"""
