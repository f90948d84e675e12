"""The twistd plugin's options (CONTRACT §2): validation in postOptions, one clear line."""

import pytest
from twisted.internet.testing import MemoryReactorClock

from parkd.tap import CameraOptions, NodeOptions, Options, makeService


def parse(options_class, argv):
    options = options_class()
    options.parseOptions(argv)
    return options


def test_node_defaults_bind_the_advertised_addresses(cluster_config):
    path, config = cluster_config
    settings = parse(NodeOptions, ["--config", path, "--id", "2"]).settings
    assert settings.node_id == 2
    assert settings.listen_raft == f"tcp:{config.member(2).raft.port}:interface=127.0.0.1:backlog=1024"
    assert settings.data_dir == "parkd-data/node-2"


def test_node_flags_win_over_the_file(cluster_config):
    path, _ = cluster_config
    settings = parse(
        NodeOptions,
        ["--config", path, "--id", "1", "--listen-raft", "tcp:0", "--heartbeat-ms", "20", "--data-dir", "/tmp/x"],
    ).settings
    assert settings.listen_raft == "tcp:0"
    assert settings.config.cluster.heartbeat_ms == 20
    assert settings.data_dir == "/tmp/x"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--id", "1"], "--config: required"),
        (["--config", "{path}"], "--id: required"),
        (["--config", "{path}", "--id", "x"], "--id: expected a whole number"),
        (["--config", "{path}", "--id", "9"], "--id: node 9 is not a member"),
        (["--config", "{path}", "--id", "1", "--listen-raft", "bogus:1"], "--listen-raft: bad endpoint"),
        (["--config", "{path}", "--id", "1", "--heartbeat-ms", "0"], "--heartbeat-ms: must be at least 1"),
        (["--config", "{path}", "--id", "9", "--join"], "--join: node 9 has no [[node]] entry; give it one or "
                                                          "--listen-raft"),
        (["--config", "{path}", "--id", "9", "--join", "--listen-raft", "tcp:0", "--listen-client", "tcp:0"],
         "--listen-http"),
    ],
)  # fmt: skip
def test_bad_node_options_print_one_line_and_exit_1(cluster_config, capfd, argv, message):
    path, _ = cluster_config
    with pytest.raises(SystemExit) as exit_:
        parse(NodeOptions, [a.format(path=path) for a in argv])
    assert exit_.value.code == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_join_starts_a_node_that_may_be_missing_from_the_file(cluster_config):
    path, config = cluster_config
    settings = parse(NodeOptions, ["--config", path, "--id", "3", "--join"]).settings
    assert settings.join and settings.listen_raft == config.member(3).raft.endpoint()
    assert not parse(NodeOptions, ["--config", path, "--id", "3"]).settings.join
    listen = ["--listen-raft", "tcp:7104", "--listen-client", "tcp:7204", "--listen-http", "tcp:7304"]
    settings = parse(NodeOptions, ["--config", path, "--id", "4", "--join", *listen]).settings
    assert settings.node_id == 4 and settings.join and settings.listen_http == "tcp:7304"
    assert settings.config.members == config.members  # the addresses it needs to answer the leader


def test_camera_options(cluster_config, capfd):
    path, config = cluster_config
    settings = parse(CameraOptions, ["--config", path, "--camera-id", "7", "--lot", "north", "--interval", "0.5"]).settings
    assert settings.interval == 0.5
    assert settings.cluster == tuple(m.client for m in config.members)
    settings = parse(
        CameraOptions, ["--config", path, "--camera-id", "7", "--lot", "north", "--cluster", "127.0.0.1:1"]
    ).settings
    assert [str(a) for a in settings.cluster] == ["127.0.0.1:1"]
    with pytest.raises(SystemExit):
        parse(CameraOptions, ["--config", path, "--camera-id", "7", "--lot", "west"])
    assert "--lot: unknown lot 'west'" in capfd.readouterr().err


def test_help_documents_every_option():
    for options_class, flags in [
        (NodeOptions, ["--config", "--id", "--data-dir", "--peers", "--listen-raft", "--listen-client",
                       "--listen-http", "--log-json", "--election-timeout-ms", "--heartbeat-ms"]),
        (CameraOptions, ["--config", "--camera-id", "--lot", "--interval", "--state-dir", "--cluster",
                         "--log-json", "--outbox-limit"]),
    ]:  # fmt: skip
        text = str(options_class())
        for flag in flags:
            assert flag + "=" in text, flag


def test_make_service_only_wires(cluster_config):
    path, _ = cluster_config
    options = Options()
    options.parseOptions(["node", "--config", path, "--id", "1"])
    reactor = MemoryReactorClock()
    top = makeService(options, reactor)
    assert reactor.tcpServers == []  # nothing listens before startService
    assert [type(s).__name__ for s in top] == ["NodeService", "HttpService", "OnSignal", "GcService"]


@pytest.mark.parametrize("options_class, argv", [(NodeOptions, ["--id", "1"]),
                                                 (CameraOptions, ["--camera-id", "1", "--lot", "north"])])  # fmt: skip
def test_a_config_without_tls_is_refused_unless_it_says_insecure(cluster_config, capfd, options_class, argv):
    path, _ = cluster_config
    with open(path) as f:
        text = f.read()
    assert "insecure = true" in text
    with open(path, "w") as f:
        f.write(text.replace("insecure = true", ""))
    with pytest.raises(SystemExit) as exit_:
        parse(options_class, ["--config", path, *argv])
    err = capfd.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1
    assert "no [tls] table" in err and "insecure = true" in err and "Traceback" not in err
