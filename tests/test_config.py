"""Config file and flags (CONTRACT §2, §3): every bad input names its key."""

import textwrap

import pytest

from parkd.config import (
    Address,
    ConfigError,
    apply_overrides,
    load_config,
    parse_cluster_addresses,
    parse_peers,
)

GOOD = """
[cluster]
election_timeout_ms = 1000
heartbeat_ms = 100

[[node]]
id = 1
raft = "127.0.0.1:7101"
client = "127.0.0.1:7201"
http = "127.0.0.1:7301"

[[node]]
id = 2
raft = "127.0.0.1:7102"
client = "127.0.0.1:7202"
http = "127.0.0.1:7302"

[[lot]]
id = "north"
capacity = 100

[[lot]]
id = "south"
"""


def write(tmp_path, text):
    path = tmp_path / "parkd.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_example_config_in_etc_is_a_working_three_node_cluster():
    config = load_config("etc/parkd.toml")
    assert [m.id for m in config.members] == [1, 2, 3]
    assert all(m.raft.host == "127.0.0.1" for m in config.members)
    assert config.cluster.election_timeout_ms == 1000
    assert {lot.id for lot in config.lots} == {"north", "south", "east"}


def test_good_file(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.member(2).client == Address("127.0.0.1", 7202)
    assert config.lot("south").capacity == 100  # the contract's default
    assert config.cluster.max_message_bytes == 16 * 1024 * 1024
    assert (config.cluster.ready_lag, config.cluster.min_free_disk_mb) == (1000, 256)  # CONTRACT §10


def test_health_and_disk_settings_from_the_file_and_flags(tmp_path):
    text = GOOD.replace("heartbeat_ms = 100", "heartbeat_ms = 100\nready_lag = 50\nmin_free_disk_mb = 0", 1)
    config = load_config(write(tmp_path, text))
    assert (config.cluster.ready_lag, config.cluster.min_free_disk_mb) == (50, 0)
    changed = apply_overrides(config, {"ready_lag": "0", "min_free_disk_mb": "1024"})
    assert (changed.cluster.ready_lag, changed.cluster.min_free_disk_mb) == (0, 1024)


@pytest.mark.parametrize(
    "change, key",
    [
        (("heartbeat_ms = 100", "heartbeat_ms = 100\ncolour = 1"), "cluster.colour: unknown key"),
        (('http = "127.0.0.1:7301"', 'http = "127.0.0.1:7301"\nweight = 2'), "node[0].weight: unknown key"),
        (("[cluster]", "verbose = true\n[cluster]"), "verbose: unknown key"),
        (("id = 2", "id = 1"), "node[1].id: duplicate id 1"),
        (('raft = "127.0.0.1:7102"', 'raft = "127.0.0.1:7101"'), "node[1].raft: duplicate raft"),
        (('raft = "127.0.0.1:7101"', 'raft = "localhost"'), "node[0].raft: bad address 'localhost'"),
        (('raft = "127.0.0.1:7101"', 'raft = "127.0.0.1:70000"'), "node[0].raft: bad address"),
        (('raft = "127.0.0.1:7101"', "raft = 7101"), "node[0].raft: expected"),
        (('client = "127.0.0.1:7201"\n', ""), "node[0].client: missing"),
        (("heartbeat_ms = 100", "heartbeat_ms = -5"), "cluster.heartbeat_ms: must be at least 1"),
        (("heartbeat_ms = 100", 'heartbeat_ms = "fast"'), "cluster.heartbeat_ms: expected a whole number"),
        (("heartbeat_ms = 100", "heartbeat_ms = 900"), "cluster.heartbeat_ms: 900 must be at most half"),
        (("capacity = 100", "capacity = 0"), "lot[0].capacity: must be at least 1"),
        (('id = "south"', 'id = "north"'), "lot[1].id: duplicate id 'north'"),
        (("[cluster]", "[camera]\ninterval = 0\n[cluster]"), "camera.interval: must be greater than 0"),
        (("heartbeat_ms = 100", "heartbeat_ms = 100\nready_lag = -1"), "cluster.ready_lag: must be at least 0"),
        (("heartbeat_ms = 100", "heartbeat_ms = 100\nmin_free_disk_mb = 0.5"),
         "cluster.min_free_disk_mb: expected a whole number"),
        (("heartbeat_ms = 100", "heartbeat_ms = 100\nretention_interval = 0"), "cluster.retention_interval: must be"),
    ],
)
def test_bad_input_names_the_key(tmp_path, change, key):
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert key in message
    assert "\n" not in message and message.startswith(path)


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[cluster\n"))
    with pytest.raises(ConfigError, match="--config: no such file"):
        load_config(str(tmp_path / "absent.toml"))


def test_unknown_member_and_lot(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"--id: node 5 is not a member \(members: 1, 2\)"):
        config.member(5)
    with pytest.raises(ConfigError, match="--lot: unknown lot 'west'"):
        config.lot("west")


def test_flags_override_the_file(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    changed = apply_overrides(
        config,
        {
            "election_timeout_ms": "3000",
            "heartbeat_ms": "50",
            "interval": "0.2",
            "peers": "1=127.0.0.1:9101/127.0.0.1:9201/127.0.0.1:9301",
        },
    )
    assert changed.cluster.election_timeout_ms == 3000
    assert changed.cluster.heartbeat_ms == 50
    assert changed.camera.interval == 0.2
    assert [(m.id, m.raft.port) for m in changed.members] == [(1, 9101)]
    assert apply_overrides(config, {"heartbeat_ms": None}) == config


def test_retention_interval_defaults_to_600_s_and_comes_from_the_file_or_the_flag(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.cluster.retention_interval == 600.0
    changed = GOOD.replace("heartbeat_ms = 100", "heartbeat_ms = 100\nretention_interval = 60")
    in_file = load_config(write(tmp_path, changed))
    assert in_file.cluster.retention_interval == 60.0
    assert apply_overrides(in_file, {"retention_interval": "5"}).cluster.retention_interval == 5.0
    with pytest.raises(ConfigError, match="--retention-interval: must be greater than 0"):
        apply_overrides(config, {"retention_interval": "0"})


@pytest.mark.parametrize(
    "flags, error",
    [
        ({"heartbeat_ms": "x"}, "--heartbeat-ms: expected a whole number"),
        ({"election_timeout_ms": "150"}, "--heartbeat-ms: 100 must be at most half"),
        ({"peers": "1=127.0.0.1:1"}, "--peers: bad member"),
        ({"peers": "1=a:1/b:2/c:3,1=d:1/e:2/f:3"}, "--peers[1].id: duplicate id 1"),
        ({"interval": "-1"}, "--interval: must be greater than 0"),
        ({"ready_lag": "-3"}, "--ready-lag: must be at least 0"),
        ({"min_free_disk_mb": "lots"}, "--min-free-disk-mb: expected a whole number"),
    ],
)
def test_bad_flags(tmp_path, flags, error):
    config = load_config(write(tmp_path, GOOD))
    with pytest.raises(ConfigError) as caught:
        apply_overrides(config, flags)
    assert error in str(caught.value)


def test_cluster_addresses():
    assert parse_cluster_addresses("127.0.0.1:1, 127.0.0.1:2") == (Address("127.0.0.1", 1), Address("127.0.0.1", 2))
    with pytest.raises(ConfigError, match=r"--cluster\[1\]: bad address"):
        parse_cluster_addresses("127.0.0.1:1,nonsense")
    with pytest.raises(ConfigError, match="--cluster: no addresses"):
        parse_cluster_addresses(" , ")
    assert parse_peers("2=[::1]:5/[::1]:6/[::1]:7")[0].raft == Address("::1", 5)


def test_a_cameras_standby_spread_defaults_to_600_s_is_off_at_0_and_comes_from_the_file_or_the_flag(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.camera.standby_spread == 600.0
    in_file = load_config(write(tmp_path, GOOD + "\n[camera]\nstandby_spread = 0\n"))
    assert in_file.camera.standby_spread == 0.0
    assert apply_overrides(in_file, {"standby_spread": "2.5"}).camera.standby_spread == 2.5
    assert apply_overrides(config, {"standby_spread": "0.0"}).camera.standby_spread == 0.0
    for bad in ("-1", "soon"):
        with pytest.raises(ConfigError, match=r"--standby-spread: expected 0 \(off\) or a number of seconds, got"):
            apply_overrides(config, {"standby_spread": bad})
    with pytest.raises(ConfigError, match=r"camera.standby_spread: expected 0 \(off\) or a number of seconds"):
        load_config(write(tmp_path, GOOD + "\n[camera]\nstandby_spread = true\n"))
