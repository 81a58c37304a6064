"""Every example ``/openapi.json`` shows is a body its model accepts (types, bounds, patterns,
required fields), decoded by msgspec as the server decodes a request."""

from __future__ import annotations

import msgspec
import pytest

from gateway.rest.docs import ERROR_EXAMPLES, ErrorOut
from gateway.rest.examples import EXAMPLES


@pytest.mark.parametrize("model", list(EXAMPLES), ids=lambda model: model.__name__)
def test_each_example_decodes_as_its_model(model: type) -> None:
    encoded = msgspec.json.encode(EXAMPLES[model])
    decoded = msgspec.json.decode(encoded, type=model)
    # msgspec skips unknown keys: a misspelt field would vanish, so every key must come back.
    again = msgspec.json.decode(msgspec.json.encode(decoded))
    example = msgspec.json.decode(encoded)
    assert {key: again.get(key) for key in example} == example


@pytest.mark.parametrize("status", list(ERROR_EXAMPLES))
def test_each_error_example_is_an_error_body(status: int) -> None:
    code, message = ERROR_EXAMPLES[status]
    body = msgspec.json.decode(
        msgspec.json.encode({"code": code, "message": message}), type=ErrorOut
    )
    assert body.code and body.message
