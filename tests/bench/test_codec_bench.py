"""The codec harness runs at a tiny size and writes the documented JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import codec as bench_codec

MESSAGES = {
    "hello", "heartbeat", "positions_50", "ack", "close_command", "quotes_10", "position_delta",
    "snapshot_100",
}  # fmt: skip


def test_codec_bench_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    assert bench_codec.main(["--repeat", "1", "--number", "2", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert {"cpu", "python", "commit"} <= set(payload["machine"])
    rows = payload["results"]
    assert {(r["message"], r["codec"]) for r in rows} == {
        (m, c) for m in MESSAGES for c in ("json", "msgpack")
    }
    for row in rows:
        assert set(row) == {"message", "codec", "encode_ns", "decode_ns", "bytes"}
        assert row["encode_ns"] >= 0 and row["decode_ns"] >= 0 and row["bytes"] > 0
    assert "codec cost per message" in capsys.readouterr().out


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench_codec.main(["--repeat", "0"])
