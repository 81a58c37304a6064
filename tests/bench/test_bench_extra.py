"""Without pyproject's ``bench`` extra (``make run``'s venv), a harness that needs it stops with
one line naming what to install, not a traceback; the engine itself never imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A None in sys.modules makes `import hdrh` fail as if hdrhistogram were not installed.
WITHOUT_EXTRA = (
    "import runpy, sys\n"
    "sys.modules['hdrh'] = None\n"
    "sys.argv = {argv!r}\n"
    "runpy.run_module({module!r}, run_name='__main__')\n"
)

# Arguments that do no work and exit 0 if the harness did not check for the extra first.
IDLE_ARGS = {"bench.e2e": ["--help"], "bench.all": ["--only", "no-such-harness"]}


@pytest.mark.parametrize("module", sorted(IDLE_ARGS))
def test_a_harness_without_the_extra_says_so_in_one_line(module: str) -> None:
    code = WITHOUT_EXTRA.format(module=module, argv=[module, *IDLE_ARGS[module]])
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"{module}: the bench extra is not installed; "
        "run `make bench`, or `pip install -c constraints.txt -e '.[bench]'`"
    ]
    assert done.stdout == ""


def test_the_engine_does_not_load_the_bench_extra() -> None:
    code = "import sys, gateway.runtime, gateway.app, sim.ea\nprint('hdrh' in sys.modules)\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "False"
