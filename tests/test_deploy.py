"""The deployment kit (``deploy/``) holds together: the compose file is valid Compose, every
service the kit promises is there and wired, Prometheus scrapes the engine, the dashboard plots
metrics the engine exports, the sample TOML loads and names every setting, and the unit runs
``tripwire run``.

The compose file is checked by ``docker-compose config`` and validated against the Compose
Specification's JSON schema with ``jsonschema`` (both from Debian's ``docker-compose`` package,
which ``make test`` installs; ``COMPOSE_SPEC_SCHEMA`` may name another copy of the schema).
Without them these two checks skip, loudly, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest
import yaml

from gateway.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


DEBIAN_COMPOSE_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
"""The Compose Specification's schema as Debian's ``docker-compose`` package installs it."""


def _missing(why: str) -> None:
    """Skip for a missing tool, loudly; under ``CI=true`` a missing tool is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(why + " (CI must run this check: `make test` installs it)")
    pytest.skip(why)


def _schema() -> dict:
    path = os.environ.get("COMPOSE_SPEC_SCHEMA") or str(DEBIAN_COMPOSE_SCHEMA)
    if not Path(path).is_file():
        _missing(f"no Compose Specification schema at {path}: `make tools` installs it")
    return json.loads(Path(path).read_text())


def test_compose_is_valid_against_the_compose_spec() -> None:
    import jsonschema

    jsonschema.validate(_compose(), _schema())


def test_docker_compose_accepts_the_compose_file() -> None:
    """``docker-compose config`` parses, interpolates and validates the file as Compose would
    before starting anything (it needs no Docker daemon)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        _missing("no docker-compose here: `make tools` installs Debian's")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "POSTGRES_PASSWORD": "postgres-password-for-the-check",
        "TRIPWIRE_JWT_SECRET": "jwt-secret-for-the-compose-check-0123456789",
        "TRIPWIRE_DEMO_PASSWORD": "demo-password-for-the-check",
    }
    checked = subprocess.run(
        [exe, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_compose_has_the_promised_services_wired() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"engine", "postgres", "redis", "prometheus", "grafana"}
    engine = services["engine"]
    assert engine["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / engine["build"]["context"].replace("..", ".")).is_dir()
    env = engine["environment"]
    assert "@postgres:5432/" in env["DATABASE_URL"] and env["REDIS_URL"].startswith("redis://redis")
    assert env["TRIPWIRE_LOG_FORMAT"] == "json"
    for service in services.values():  # every mounted file of ours exists
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["engine:8000"]


def test_the_dashboard_plots_metrics_the_engine_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/tripwire.json").read_text())
    exported = set(re.findall(r'"(tripwire_[a-z_]+)"', (ROOT / "gateway/metrics.py").read_text()))
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"tripwire_[a-z_]+", target["expr"]))
    assert len(used) >= 10
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert base in exported, name


def test_the_sample_config_loads_and_names_every_setting() -> None:
    path = DEPLOY / "tripwire.example.toml"
    settings = load_settings({"TRIPWIRE_CONFIG": str(path)})
    assert settings == Settings()  # the sample shows the defaults
    text = path.read_text()
    for field in msgspec.structs.fields(Settings):
        assert re.search(rf"^#? ?{field.name} = ", text, re.M), field.name


def test_the_systemd_unit_runs_the_engine() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "tripwire.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("tripwire run")
    assert service["KillSignal"] == "SIGTERM"
    assert "Environment=TRIPWIRE_CONFIG=" in (DEPLOY / "tripwire.service").read_text()
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_dockerfile_installs_runtime_dependencies_only() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "-c constraints.txt ." in text and "[dev]" not in text
    # sim/ too: the demo's paper device and the replay feed run in the engine.
    for package in ("engine", "protocol", "actors", "gateway", "persistence", "sim", "data"):
        assert f"COPY {package} {package}" in text
