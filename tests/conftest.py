"""Session-wide test configuration: hypothesis profiles and shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog
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


@pytest.fixture(autouse=True)
def _keep_structlog_config() -> Iterator[None]:
    """Put structlog's configuration back after each test.

    A test that runs the CLI's ``main`` configures logging for the process with pytest's captured
    stream of that test, which pytest closes afterwards: every later log line would then fail
    with "I/O operation on closed file".
    """
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
