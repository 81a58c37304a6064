"""Session-wide test configuration: hypothesis profiles and shared fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Real Postgres and Redis fixtures, for persistence tests and for end-to-end tests alike.
pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.redis"]

# Shared, noisy 2-core machines: no per-example deadlines (speed is measured in bench/, never
# asserted in tests). CI runs a few more examples than a developer's quick loop.
settings.register_profile(
    "dev", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
