"""The cluster's settings from the environment: out of range or malformed, a node refuses to
start with the variable named; in range, they reach the node as given."""

from __future__ import annotations

import pytest

from gateway.config import load_settings
from gateway.launcher import node_environment
from protocol.errors import ConfigError


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TRIPWIRE_STREAM_APPEND_WAIT_MS", "-0.5"),
        ("TRIPWIRE_STREAM_APPEND_WAIT_MS", "10.5"),
        ("TRIPWIRE_STREAM_APPEND_WAIT_MS", "1e9"),
        ("TRIPWIRE_STREAM_APPEND_WAIT_MS", "nan"),
        ("TRIPWIRE_STREAM_APPEND_WAIT_MS", "inf"),
        ("TRIPWIRE_STREAM_APPEND_WAIT_MS", "1ms"),
        ("TRIPWIRE_STREAM_APPEND_WAIT_MS", "0x10"),
        ("TRIPWIRE_PARTITIONS", "0"),
        ("TRIPWIRE_PARTITIONS", "4097"),
        ("TRIPWIRE_PARTITIONS", "sixty-four"),
        ("TRIPWIRE_LEASE_S", "0.5"),
        ("TRIPWIRE_LEASE_S", "nan"),
        ("TRIPWIRE_STREAM_KEEP_S", "14"),  # under three leases of 5 s
        ("TRIPWIRE_EXPECT_NODES", "0"),
        ("TRIPWIRE_EXPECT_NODES", "65"),
        ("TRIPWIRE_EXPECT_NODES", "2.5"),
    ],
)
def test_a_bad_cluster_setting_stops_the_start_and_names_its_variable(
    variable: str, raw: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({variable: raw})
    assert variable in str(error.value)


def test_cluster_settings_in_range_are_taken_as_given() -> None:
    settings = load_settings(
        {
            "TRIPWIRE_STREAM_APPEND_WAIT_MS": "0",
            "TRIPWIRE_PARTITIONS": "128",
            "TRIPWIRE_LEASE_S": "3",
            "TRIPWIRE_STREAM_KEEP_S": "9",
            "TRIPWIRE_EXPECT_NODES": "3",
        }
    )
    assert settings.expect_nodes == 3
    assert settings.stream_append_wait_ms == 0.0  # 0: every append goes to the task
    assert (settings.partitions, settings.lease_s, settings.stream_keep_s) == (128, 3.0, 9.0)
    assert load_settings({"TRIPWIRE_STREAM_APPEND_WAIT_MS": "10"}).stream_append_wait_ms == 10.0


def test_the_launcher_tells_each_node_how_many_were_started_with_it() -> None:
    settings = load_settings({"TRIPWIRE_NODES": "3", "TRIPWIRE_PORT": "9000"})
    envs = [node_environment(settings, i, "postgresql://db", "redis://r", {}) for i in range(3)]
    for env in envs:
        node = load_settings(env)
        assert (node.nodes, node.expect_nodes) == (1, 3)
    assert [load_settings(env).port for env in envs] == [9000, 9001, 9002]
