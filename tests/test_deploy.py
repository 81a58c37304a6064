"""The deployment kit (``deploy/``) holds together: the compose file is valid Compose, every
service the kit promises is there and wired, Prometheus scrapes the engine, the dashboard plots
metrics the engine exports, the sample TOML loads and names every setting, and the unit runs
``tripwire run``.

The compose file is validated against the Compose Specification's JSON schema with
``jsonschema`` when the schema is at hand (``COMPOSE_SPEC_SCHEMA``, or the
``compose/config/compose_spec.json`` the ``docker-compose`` wheel ships); the structural checks
run always.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from pathlib import Path

import msgspec
import pytest
import yaml

from gateway.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _schema() -> dict | None:
    path = os.environ.get("COMPOSE_SPEC_SCHEMA")
    if path:
        return json.loads(Path(path).read_text())
    try:
        import compose  # docker-compose 1.x ships the spec's schema
    except ImportError:
        return None
    found = Path(compose.__file__).parent / "config" / "compose_spec.json"
    return json.loads(found.read_text()) if found.exists() else None


def test_compose_is_valid_against_the_compose_spec() -> None:
    schema = _schema()
    if schema is None:
        pytest.skip("no Compose Specification schema here (set COMPOSE_SPEC_SCHEMA)")
    import jsonschema

    jsonschema.validate(_compose(), schema)


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
    for package in ("engine", "protocol", "actors", "gateway", "persistence", "data"):
        assert f"COPY {package} {package}" in text
