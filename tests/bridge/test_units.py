"""The bridge's parts on their own: the retcode table, the window on disk, the secret, --help,
the reconnect delays."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.device import Ack
from protocol.errors import ConfigError
from protocol.results import RESULT_CODES, ResultCategory, classify
from sim.mt5 import constants
from tests.bridge.harness import ROOT
from tripwire_ea import retcodes as rc
from tripwire_ea import terminal as adapter
from tripwire_ea.cli import device_url
from tripwire_ea.secret import SECRET_ENV, load_secret
from tripwire_ea.session import reconnect_delay
from tripwire_ea.window import CommandWindow

# -- retcodes --------------------------------------------------------------------------------

_SERVER_VIEW = {
    rc.Outcome.DONE: ResultCategory.DONE,
    rc.Outcome.RETRY: ResultCategory.RETRYABLE,
    rc.Outcome.ALREADY_CLOSED: ResultCategory.ALREADY_CLOSED,
    rc.Outcome.UNKNOWN: ResultCategory.UNKNOWN,
}


def test_every_mt5_code_the_server_knows_is_in_the_bridge_table_under_its_name() -> None:
    server = RESULT_CODES["mt5"]
    assert set(server) <= set(rc.RETCODES)
    for code, row in server.items():
        assert rc.RETCODES[code].name == row.name


@pytest.mark.parametrize("code", sorted(rc.RETCODES))
def test_the_bridge_reading_agrees_with_the_server_classification(code: int) -> None:
    """What the bridge writes in ``executed`` makes the server classify the ack as the
    bridge reads it: done is done, retry is retryable, unknown stays unknown, and every
    refusal (market closed, no money, invalid stops...) is final."""
    row = rc.RETCODES[code]
    server = classify("mt5", code, row.executed)
    assert server is _SERVER_VIEW.get(row.outcome, ResultCategory.FINAL), (row, server)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (10009, rc.Outcome.DONE), (10010, rc.Outcome.DONE), (10008, rc.Outcome.DONE),
        (10004, rc.Outcome.RETRY), (10020, rc.Outcome.RETRY), (10021, rc.Outcome.RETRY),
        (10018, rc.Outcome.MARKET_CLOSED), (10019, rc.Outcome.NO_MONEY),
        (10016, rc.Outcome.INVALID_STOPS), (10014, rc.Outcome.INVALID_VOLUME),
        (10036, rc.Outcome.ALREADY_CLOSED), (10012, rc.Outcome.UNKNOWN),
        (10031, rc.Outcome.UNKNOWN), (10006, rc.Outcome.REJECTED), (12345, rc.Outcome.UNKNOWN),
    ],
)  # fmt: skip
def test_result_categories(code: int, outcome: rc.Outcome) -> None:
    assert rc.outcome(code).outcome is outcome


def test_the_retcode_numbers_are_metatrader5s() -> None:
    names = {n: v for n, v in vars(constants).items() if n.startswith("TRADE_RETCODE_")}
    assert len(names) == len(rc.RETCODES) - 2  # all but the protocol's two EA codes
    for name, value in names.items():
        assert rc.RETCODES[value].name == name.removeprefix("TRADE_RETCODE_")
    written = {n: v for n, v in vars(rc).items() if n.startswith("TRADE_RETCODE_")}
    assert len(written) == 4
    for name, value in written.items():
        assert names[name] == value


def test_the_adapter_constants_are_metatrader5s() -> None:
    shared = [n for n in vars(adapter) if n.isupper() and hasattr(constants, n)]
    assert len(shared) > 30
    for name in shared:
        assert getattr(adapter, name) == getattr(constants, name), name


# -- the window on disk ----------------------------------------------------------------------


def _ack(cid: str) -> Ack:
    return Ack(command_id=cid, retcode=10009, fill_price=1284.5, executed=True)


def test_a_started_command_is_on_disk_before_order_send(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    window = CommandWindow(path)
    window.start("P1.close.1", "close", 1000, ticket=7)
    # A new process (the bridge restarted) finds it unanswered.
    again = CommandWindow(path)
    [entry] = again.pending()
    assert (entry.command_id, entry.kind, entry.ticket, entry.ack) == (
        "P1.close.1",
        "close",
        7,
        None,
    )
    again.finish("P1.close.1", _ack("P1.close.1"))
    third = CommandWindow(path)
    assert third.pending() == []
    stored = third.get("P1.close.1")
    assert stored is not None and stored.ack == _ack("P1.close.1")


def test_the_window_keeps_its_capacity_and_never_drops_an_unanswered_id(tmp_path: Path) -> None:
    window = CommandWindow(tmp_path / "w.json", capacity=10)  # at least the protocol's 1000
    assert window.capacity == 1000
    window.start("stuck", "open", 0, client_id="tw:P0")
    for i in range(1100):
        window.start(f"c{i}", "modify", i, ticket=i)
        window.finish(f"c{i}", _ack(f"c{i}"))
    reloaded = CommandWindow(tmp_path / "w.json")
    assert len(reloaded) == 1000
    assert reloaded.get("stuck") is not None and reloaded.get("c0") is None
    assert reloaded.get("c1099") is not None


def test_the_window_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    window = CommandWindow(path)
    window.start("a", "open", 0)
    assert not path.with_name("w.json.tmp").exists()
    assert json.loads(path.read_text())["entries"][0]["command_id"] == "a"


# -- the secret ------------------------------------------------------------------------------


def test_the_secret_comes_from_the_environment() -> None:
    assert load_secret(None, {SECRET_ENV: " s3cret-value \n"}) == b"s3cret-value"
    with pytest.raises(ConfigError, match=SECRET_ENV):
        load_secret(None, {})


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_a_secret_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "secret"
    path.write_text("file-secret\n")
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secret(str(path), {})


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_a_0600_secret_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("file-secret\n")
    path.chmod(0o600)
    assert load_secret(str(path), {SECRET_ENV: "env-secret"}) == b"file-secret"
    with pytest.raises(ConfigError, match="cannot read"):
        load_secret(str(tmp_path / "missing"), {})


def test_help_explains_the_bridge_and_where_the_secret_goes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tripwire_ea", "--help"],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    for text in ("--server", "--device-id", "--secret-file", SECRET_ENV, "order_send", "chmod 600"):
        assert text in done.stdout
    assert "--secret " not in done.stdout  # never on the command line


def test_a_world_readable_secret_file_stops_the_bridge_with_a_clear_message(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 32)
    secret.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "tripwire_ea", "--server", "ws://127.0.0.1:1",
         "--device-id", "d-1", "--secret-file", str(secret)],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "accessible by other users" in done.stderr and "chmod 600" in done.stderr


def test_device_url() -> None:
    assert device_url("wss://tw.example.com") == "wss://tw.example.com/ws/device"
    assert device_url("ws://127.0.0.1:8000/") == "ws://127.0.0.1:8000/ws/device"
    assert device_url("wss://h/custom/path") == "wss://h/custom/path"
    with pytest.raises(ConfigError):
        device_url("https://h")


# -- reconnecting ----------------------------------------------------------------------------


def test_reconnect_delays_follow_the_close_codes() -> None:
    rng = random.Random(1)
    waits = [reconnect_delay(1006, attempt, rng, 60.0) for attempt in range(10)]
    assert all(0.5 <= w <= 60.0 for w in waits)
    assert waits[-1] >= 30.0  # doubled up to the cap, with jitter of at most half
    assert len({round(w, 6) for w in waits}) == len(waits)  # jittered
    assert reconnect_delay(4001, 9, rng, 60.0) <= 0.5  # sign a new hello at once
    assert reconnect_delay(1008, 0, rng, 60.0) >= 30.0  # authentication: at least 30 s
    assert 1.0 <= reconnect_delay(1012, 9, rng, 60.0) <= 5.0
    assert reconnect_delay(4003, 0, rng, 60.0) >= 60.0
    assert reconnect_delay(None, 20, rng, 2.0) <= 2.0
