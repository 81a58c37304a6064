"""schemathesis's stateful phase against the live ``/openapi.json`` of a real engine: chains of
calls that feed one answer's values (the ids of users and devices it created, as the links
schemathesis infers from the document) into the next request, as the admin with a real token.
No 5xx, and every response is the one the document promises, along every chain.

The positive and negative phases (one call at a time) are ``test_rest_schema.py``. Bounded:
a few dozen short scenarios, seconds in all.
"""

from __future__ import annotations

import contextlib
from typing import Any

import schemathesis
import trio
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky
from schemathesis import GenerationMode

from tests.e2e.conftest import ADMIN_PASSWORD
from tests.e2e.helpers import make_signal, post_signal, quote
from tests.e2e.test_rest_schema import CHECKS

SCENARIOS = 30
STEPS = 6
RUNS = 8
"""At most this many runs of the machine to complete :data:`SCENARIOS` (see below)."""


async def test_chains_of_calls_hold_the_schema(engine) -> None:
    token = await engine.login("admin", ADMIN_PASSWORD)  # admin: every operation is open
    admin_id = engine.ctx.registry.by_name["admin"]
    quote(engine)
    async with engine.client() as http:  # something to find, decide on and page through
        assert (await post_signal(http, make_signal([admin_id]))).status_code == 201
    calls: list[str] = []
    failures: list[str] = []
    scenarios = [0]

    def run() -> None:
        schema = schemathesis.openapi.from_url(engine.base_url + "/openapi.json", timeout=10)
        schema.config.update(headers={"Authorization": f"Bearer {token}"}, request_timeout=10)
        # Valid requests only: a chain carries on from what the previous call created (the
        # invalid ones, call by call, are test_rest_schema.py's negative phase).
        for generation in (schema.config.generation, schema.config.phases.stateful.generation):
            generation.update(modes=[GenerationMode.POSITIVE])
        machine: Any = schema.as_state_machine()

        class Chains(machine):  # type: ignore[misc, valid-type]
            def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
                return {"base_url": engine.base_url}

            def after_call(self, response: Any, case: schemathesis.Case) -> None:
                super().after_call(response, case)
                calls.append(f"{case.method} {case.path} -> {response.status_code}")

            def validate_response(
                self, response: Any, case: schemathesis.Case, *args: Any, **kwargs: Any
            ) -> None:
                # Collected, not raised: hypothesis would replay a failing chain to shrink it,
                # and the server is no longer where it was the first time.
                try:
                    case.validate_response(response, checks=CHECKS)
                except (Exception, BaseExceptionGroup) as exc:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code} "
                        f"{response.text[:300]}\n{exc}"
                    )

            def teardown(self) -> None:
                scenarios[0] += 1

        # The server keeps what each chain created (a user name taken, a device revoked), so a
        # prefix hypothesis replays may go another way and it reports "flaky" data generation:
        # as schemathesis's own runner does, count the scenarios done and run again.
        for _ in range(RUNS):
            with contextlib.suppress(Flaky):
                Chains.run(
                    settings=settings(
                        max_examples=SCENARIOS - scenarios[0],
                        stateful_step_count=STEPS,
                        deadline=None,
                        database=None,
                        phases=[Phase.generate],
                        suppress_health_check=list(HealthCheck),
                    )
                )
            if scenarios[0] >= SCENARIOS:
                return

    await trio.to_thread.run_sync(run)
    assert not failures, "\n\n".join(failures)
    assert scenarios[0] >= SCENARIOS // 2, (scenarios, calls)
    statuses = {call.rsplit(" ", 1)[1] for call in calls}
    assert {"200", "201"} <= statuses, calls  # the chains created things and read them back
