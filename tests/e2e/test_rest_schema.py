"""schemathesis against the live ``/openapi.json``: no 5xx anywhere, and every response (its
status, content type and body) is the one the document promises.

Generated cases run in a worker thread (schemathesis speaks ``requests``) against the engine
serving in this test's trio run, as an admin so the admin-only operations are exercised too.
Valid requests (positive mode) must get a documented status; invalid ones (negative mode:
wrong types, missing fields, bodies that are not even UTF-8) must get a documented error, never
a 5xx. A few examples per operation keep the whole run to seconds.
"""

from __future__ import annotations

import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import ADMIN_PASSWORD
from tests.e2e.helpers import make_signal, post_signal

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MODES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 4}
"""Examples per operation in each mode."""


async def test_the_live_schema_holds(engine) -> None:
    token = await engine.login("admin", ADMIN_PASSWORD)
    async with engine.client() as http:  # something to find: a signal, for the admin
        admin_id = engine.ctx.registry.by_name["admin"]
        assert (await post_signal(http, make_signal([admin_id]))).status_code == 201
    headers = {"Authorization": f"Bearer {token}"}

    def run() -> tuple[list[str], list[str]]:
        schema = schemathesis.openapi.from_url(engine.base_url + "/openapi.json", timeout=10)
        tested, failures = [], []
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            for mode, examples in MODES.items():

                @settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def check(case: schemathesis.Case) -> None:
                    response = case.call(base_url=engine.base_url, headers=headers, timeout=10)
                    case.validate_response(response, checks=CHECKS, headers=headers)

                try:
                    check()
                except Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE, label  # nothing invalid to send
                except (Exception, BaseExceptionGroup) as exc:  # collect them all
                    failures.append(f"{label} ({mode.value}): {exc}")
            tested.append(label)
        return tested, failures

    tested, failures = await trio.to_thread.run_sync(run)
    assert len(tested) >= 28, tested
    # The real routes, converters and all (they were published as ``/api/v1/signals/{version}``).
    assert "POST /api/v1/signals/{strategy_id}/{signal_id}/{version}/decision" in tested
    assert "GET /api/v1/signals/{strategy_id}/{signal_id}/{version}" in tested
    assert not failures, "\n\n".join(failures)
