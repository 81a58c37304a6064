"""Command ids and client ids: derived, parseable, and valid on the wire."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import ids
from protocol.errors import UsageError
from protocol.types import ClientId, Id

POSITION_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,27}", fullmatch=True)


@given(POSITION_IDS, st.sampled_from(sorted(ids.ACTIONS)), st.integers(1, 10**9 - 1))
def test_command_ids_round_trip_and_are_wire_ids(
    position_id: str, action: str, attempt: int
) -> None:
    value = ids.command_id(position_id, action, attempt)
    assert ids.parse_command_id(value) == (position_id, action, attempt)
    assert msgspec.convert(value, Id) == value
    # Derived from what it does: the same command gets the same id.
    assert ids.command_id(position_id, action, attempt) == value


@given(POSITION_IDS, st.sampled_from(["", " [sl]", "[tp 2650.1]", " from tripwire"]))
def test_client_ids_fit_a_comment_and_come_back(position_id: str, suffix: str) -> None:
    tag = ids.client_id(position_id)
    assert len(tag) <= 31 and msgspec.convert(tag, ClientId) == tag
    assert ids.position_id_from_comment(tag + suffix) == position_id


@pytest.mark.parametrize(
    "value",
    ["", "P1", "P1.close", "P1.close.0x1", "P1.sell.1", "P1.close.1\n", "P1.close.\u0661",
     "x" * 29 + ".close.1", "P1.close.1234567890", ".close.1"],
)  # fmt: skip
def test_not_command_ids(value: str) -> None:
    assert ids.parse_command_id(value) is None


@pytest.mark.parametrize(
    ("position_id", "action", "attempt"),
    [("P1", "sell", 1), ("P1", "close", 0), ("P1", "close", 10**9), ("P 1", "close", 1),
     ("P1\n", "close", 1), ("x" * 29, "close", 1), ("", "open", 1), ("P.1", "open", 1)],
)  # fmt: skip
def test_refused_command_ids(position_id: str, action: str, attempt: int) -> None:
    with pytest.raises(UsageError):
        ids.command_id(position_id, action, attempt)


def test_comments_that_are_not_ours() -> None:
    for comment in ["", "manual", "tw:", "tw: P1", "TW:P1", "tw:P1\n", "xtw:P1", "tw:" + "x" * 29]:
        assert ids.position_id_from_comment(comment) is None
    with pytest.raises(UsageError):
        ids.client_id("P1\n")


@given(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet="Pp09az_-AZ.\n é١", max_size=32),
    )
)
def test_position_id_check_is_the_documented_pattern(value: str) -> None:
    """The quick check for plain alphanumeric ids decides exactly as the regex does."""
    assert ids._is_position_id(value) == (ids._POSITION_ID.fullmatch(value) is not None)
