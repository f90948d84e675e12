"""Configuration: the TOML file of CONTRACT §3 into frozen dataclasses.

Every problem raises :class:`ConfigError` with one line that names the key
(``node[2].raft``, ``cluster.heartbeat_ms``, ``--peers``); callers print that
line and exit non-zero.  Command-line flags override the file
(:func:`apply_overrides`).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_CAPACITY = 100


class ConfigError(Exception):
    """A bad configuration; ``str()`` is the one line shown to the user."""


@dataclass(frozen=True)
class Address:
    """A ``host:port`` that peers dial (CONTRACT §2)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def endpoint(self) -> str:
        """The Twisted listening endpoint that binds exactly this address.

        With a listen backlog of 1024 rather than Twisted's 50: after a node
        fails, thousands of cameras reconnect to the others at once.
        """
        interface = self.host.replace(":", "\\:")  # endpoint strings escape colons
        return f"tcp:{self.port}:interface={interface}:backlog=1024"


@dataclass(frozen=True)
class Member:
    """One ``[[node]]`` table: the addresses a node advertises."""

    id: int
    raft: Address
    client: Address
    http: Address


@dataclass(frozen=True)
class Lot:
    id: str
    capacity: int = DEFAULT_CAPACITY


@dataclass(frozen=True)
class ClusterSettings:
    election_timeout_ms: int = 1000
    heartbeat_ms: int = 100
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    snapshot_entries: int = 100_000  # snapshot once the applied log holds this many entries
    snapshot_margin: int = 10_000  # entries kept below a snapshot for slightly lagging followers
    history_hours: float = 24.0  # frame history kept (current values and dedup state are kept for ever)
    retention_interval: float = 600.0  # seconds between the leader's retention entries
    insecure: bool = False  # no [tls]: plaintext on every port, allowed only when said (CONTRACT §9)
    ready_lag: int = 1000  # /readyz: applied at most this many entries behind the leader's commit index
    min_free_disk_mb: int = 256  # below this much free space on the data dir's filesystem: the nospace alarm


@dataclass(frozen=True)
class CameraSettings:
    """The optional ``[camera]`` table: defaults for every camera daemon.

    ``tls_*`` name the camera's CA, certificate and key (``{camera_id}`` expands);
    without them a camera uses ``[tls] ca`` and ``camera-<id>.pem``/``.key`` next to it.
    """

    interval: float = 10.0
    outbox_limit: int = 10000
    ack_timeout: float = 5.0
    standby_spread: float = 600.0  # seconds; 0: no standby TLS sessions (parkd.camera.standby)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True)
class LogSettings:
    """The optional ``[log]`` table: how the ``--log-json`` file is bounded."""

    max_mb: float = 100.0  # rotate at this size
    keep: int = 5  # rotated files kept (FILE.1 is the newest)


@dataclass(frozen=True)
class TlsSettings:
    """The ``[tls]`` table (CONTRACT §9): a node's CA, certificate, key and CRL files.

    Relative paths in the file are relative to the file's directory; ``{id}``
    expands to the node's id (:meth:`for_node`).
    """

    ca: str
    cert: str
    key: str
    crl: str | None = None
    public_reads: bool = True  # GETs of the read API, the dashboard and /metrics need no client certificate
    handshake_timeout: float = 10.0  # seconds: a TLS handshake not finished by then is cut (slowloris)

    def for_node(self, node_id: int) -> TlsSettings:
        return replace(self, cert=self.cert.replace("{id}", str(node_id)), key=self.key.replace("{id}", str(node_id)))


@dataclass(frozen=True)
class Config:
    """The whole file, shared by nodes, cameras and parkctl."""

    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    members: tuple[Member, ...] = ()
    lots: tuple[Lot, ...] = ()
    tls: TlsSettings | None = None
    log: LogSettings = field(default_factory=LogSettings)

    def check_secure(self) -> None:
        """A daemon runs with TLS, or in plaintext only when the config says so."""
        if self.tls is None and not self.cluster.insecure:
            raise ConfigError(
                "no [tls] table: give one (ca, cert, key; see README \"Securing a cluster\") "
                "or set [cluster] insecure = true to run in plaintext"
            )

    def member(self, node_id: int) -> Member:
        for member in self.members:
            if member.id == node_id:
                return member
        known = ", ".join(str(m.id) for m in self.members) or "none"
        raise ConfigError(f"--id: node {node_id} is not a member (members: {known})")

    def lot(self, lot_id: str) -> Lot:
        for lot in self.lots:
            if lot.id == lot_id:
                return lot
        known = ", ".join(lot.id for lot in self.lots) or "none"
        raise ConfigError(f"--lot: unknown lot {lot_id!r} (lots: {known})")


# ---------------------------------------------------------------- primitives


def parse_address(text: Any, key: str) -> Address:
    """``host:port`` with a non-empty host and a port in 1..65535."""
    if not isinstance(text, str):
        raise ConfigError(f"{key}: expected a \"host:port\" string, got {text!r}")
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: bad address {text!r} (expected host:port)")
    return Address(host.strip("[]"), int(port))


def parse_int(value: Any, key: str, minimum: int = 1) -> int:
    """A whole number (TOML integer or decimal string) at least ``minimum``."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
    return value


def parse_float(value: Any, key: str, minimum: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not number > minimum or number != number:
        raise ConfigError(f"{key}: must be greater than {minimum}, got {value!r}")
    return number


def parse_seconds_or_off(value: Any, key: str) -> float:
    """A duration in seconds, or 0 for "off"."""
    try:
        seconds = parse_float(value, key, minimum=-math.inf)  # any number; checked below
    except ConfigError:
        seconds = -1.0
    if seconds < 0:
        raise ConfigError(f"{key}: expected 0 (off) or a number of seconds, got {value!r}")
    return seconds


def _check_keys(table: Any, allowed: set[str], key: str, required: set[str] = frozenset()):
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table")
    for name in table:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}: unknown key" if key else f"{name}: unknown key")
    for name in sorted(required):
        if name not in table:
            raise ConfigError(f"{key}.{name}: missing")


# ---------------------------------------------------------------- the file


def load_config(path: str) -> Config:
    """Read and validate a TOML config file."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file {path!r}") from None
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return parse_config(raw, os.path.dirname(os.path.abspath(path)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_config(raw: dict[str, Any], base_dir: str = ".") -> Config:
    """A Config from parsed TOML; relative file paths are taken from ``base_dir``."""
    _check_keys(raw, {"cluster", "node", "lot", "camera", "tls", "log"}, "")
    cluster = _parse_cluster(raw.get("cluster", {}))
    members = tuple(_parse_member(t, f"node[{i}]") for i, t in enumerate(_array(raw, "node")))
    lots = tuple(_parse_lot(t, f"lot[{i}]") for i, t in enumerate(_array(raw, "lot")))
    _check_members(members, "node")
    _check_unique([lot.id for lot in lots], "lot", "id")
    camera = _parse_camera(raw.get("camera", {}), base_dir)
    tls = _parse_tls(raw["tls"], base_dir) if "tls" in raw else None
    log = _parse_log(raw.get("log", {}))
    return Config(cluster=cluster, camera=camera, members=members, lots=lots, tls=tls, log=log)


def _parse_log(table: Any) -> LogSettings:
    _check_keys(table, {"max_mb", "keep"}, "log")
    defaults = LogSettings()
    return LogSettings(
        max_mb=parse_float(table.get("max_mb", defaults.max_mb), "log.max_mb"),
        keep=parse_int(table.get("keep", defaults.keep), "log.keep"),
    )


def _parse_camera(table: Any, base_dir: str) -> CameraSettings:
    _check_keys(table, {"interval", "outbox_limit", "ack_timeout", "standby_spread", "tls_ca", "tls_cert", "tls_key"},
                "camera")
    defaults = CameraSettings()
    return CameraSettings(
        interval=parse_float(table.get("interval", defaults.interval), "camera.interval"),
        outbox_limit=parse_int(table.get("outbox_limit", defaults.outbox_limit), "camera.outbox_limit"),
        ack_timeout=parse_float(table.get("ack_timeout", defaults.ack_timeout), "camera.ack_timeout"),
        standby_spread=parse_seconds_or_off(table.get("standby_spread", defaults.standby_spread),
                                            "camera.standby_spread"),
        **{k: parse_path(table[k], f"camera.{k}", base_dir) for k in ("tls_ca", "tls_cert", "tls_key") if k in table},
    )


def _parse_tls(table: Any, base_dir: str) -> TlsSettings:
    _check_keys(table, {"ca", "cert", "key", "crl", "public_reads", "handshake_timeout"}, "tls", {"ca", "cert", "key"})
    crl = table.get("crl")
    return TlsSettings(
        ca=parse_path(table["ca"], "tls.ca", base_dir),
        cert=parse_path(table["cert"], "tls.cert", base_dir),
        key=parse_path(table["key"], "tls.key", base_dir),
        crl=parse_path(crl, "tls.crl", base_dir) if crl is not None else None,
        public_reads=parse_bool(table.get("public_reads", True), "tls.public_reads"),
        handshake_timeout=parse_float(table.get("handshake_timeout", 10.0), "tls.handshake_timeout"),
    )


def parse_path(value: Any, key: str, base_dir: str = ".") -> str:
    """A non-empty file path; a relative one is taken from ``base_dir``."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a file path, got {value!r}")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def parse_bool(value: Any, key: str) -> bool:
    """A TOML boolean, or true/false/yes/no from a flag."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _array(raw: dict, name: str) -> list:
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected an array of tables ([[{name}]])")
    return value


def _parse_cluster(table: Any) -> ClusterSettings:
    _check_keys(table, set(ClusterSettings.__dataclass_fields__), "cluster")
    defaults = ClusterSettings()
    settings = ClusterSettings(
        insecure=parse_bool(table.get("insecure", False), "cluster.insecure"),
        snapshot_entries=parse_int(table.get("snapshot_entries", defaults.snapshot_entries), "cluster.snapshot_entries"),
        snapshot_margin=parse_int(
            table.get("snapshot_margin", defaults.snapshot_margin), "cluster.snapshot_margin", minimum=0
        ),
        history_hours=parse_float(table.get("history_hours", defaults.history_hours), "cluster.history_hours"),
        retention_interval=parse_float(
            table.get("retention_interval", defaults.retention_interval), "cluster.retention_interval"
        ),
        election_timeout_ms=parse_int(
            table.get("election_timeout_ms", defaults.election_timeout_ms),
            "cluster.election_timeout_ms",
        ),
        heartbeat_ms=parse_int(table.get("heartbeat_ms", defaults.heartbeat_ms), "cluster.heartbeat_ms"),
        ready_lag=parse_int(table.get("ready_lag", defaults.ready_lag), "cluster.ready_lag", minimum=0),
        min_free_disk_mb=parse_int(
            table.get("min_free_disk_mb", defaults.min_free_disk_mb), "cluster.min_free_disk_mb", minimum=0
        ),
        max_message_bytes=parse_int(
            table.get("max_message_bytes", defaults.max_message_bytes),
            "cluster.max_message_bytes",
            minimum=1024,
        ),
    )
    return check_cluster(settings, "cluster.heartbeat_ms")


def check_cluster(settings: ClusterSettings, key: str) -> ClusterSettings:
    if settings.heartbeat_ms * 2 > settings.election_timeout_ms:
        raise ConfigError(
            f"{key}: {settings.heartbeat_ms} must be at most half of "
            f"the election timeout ({settings.election_timeout_ms} ms)"
        )
    return settings


def _parse_member(table: Any, key: str) -> Member:
    _check_keys(table, {"id", "raft", "client", "http"}, key, {"id", "raft", "client", "http"})
    return Member(
        id=parse_int(table["id"], f"{key}.id"),
        raft=parse_address(table["raft"], f"{key}.raft"),
        client=parse_address(table["client"], f"{key}.client"),
        http=parse_address(table["http"], f"{key}.http"),
    )


def _parse_lot(table: Any, key: str) -> Lot:
    _check_keys(table, {"id", "capacity"}, key, {"id"})
    lot_id = table["id"]
    if not isinstance(lot_id, str) or not lot_id.strip():
        raise ConfigError(f"{key}.id: expected a non-empty string, got {lot_id!r}")
    return Lot(lot_id, parse_int(table.get("capacity", DEFAULT_CAPACITY), f"{key}.capacity"))


def _check_unique(values: list, table: str, key: str) -> None:
    seen = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ConfigError(f"{table}[{i}].{key}: duplicate {key} {value!r}")
        seen.add(value)


def _check_members(members: tuple[Member, ...], table: str) -> None:
    _check_unique([m.id for m in members], table, "id")
    for kind in ("raft", "client", "http"):
        _check_unique([getattr(m, kind) for m in members], table, kind)


# ---------------------------------------------------------------- flags


def parse_peers(text: str) -> tuple[Member, ...]:
    """``--peers ID=RAFT/CLIENT/HTTP,...`` (every member, this node included)."""
    members = []
    for i, item in enumerate(p for p in text.split(",") if p.strip()):
        node_id, sep, addresses = item.strip().partition("=")
        parts = addresses.split("/")
        if not sep or len(parts) != 3:
            raise ConfigError(f"--peers: bad member {item!r} (expected ID=RAFT/CLIENT/HTTP)")
        members.append(
            Member(
                id=parse_int(node_id, f"--peers[{i}] id"),
                raft=parse_address(parts[0], f"--peers[{i}] raft"),
                client=parse_address(parts[1], f"--peers[{i}] client"),
                http=parse_address(parts[2], f"--peers[{i}] http"),
            )
        )
    if not members:
        raise ConfigError("--peers: no members given")
    _check_members(tuple(members), "--peers")
    return tuple(members)


def parse_cluster_addresses(text: str) -> tuple[Address, ...]:
    """``--cluster host:port,...`` (client ports, for cameras and parkctl)."""
    addresses = tuple(
        parse_address(part, f"--cluster[{i}]")
        for i, part in enumerate(p for p in text.split(",") if p.strip())
    )
    if not addresses:
        raise ConfigError("--cluster: no addresses given")
    return addresses


def apply_overrides(config: Config, flags: dict[str, Any]) -> Config:
    """Apply the flags that were given (``None`` means not given)."""
    camera = config.camera
    for name, parse in (("interval", parse_float), ("outbox_limit", parse_int), ("ack_timeout", parse_float),
                        ("standby_spread", parse_seconds_or_off)):
        if flags.get(name) is not None:
            camera = replace(camera, **{name: parse(flags[name], "--" + name.replace("_", "-"))})
    cluster = config.cluster
    minimums = {"max_message_bytes": 1024, "snapshot_margin": 0, "ready_lag": 0, "min_free_disk_mb": 0}
    for name in ("election_timeout_ms", "heartbeat_ms", "max_message_bytes", "snapshot_entries", "snapshot_margin",
                 "ready_lag", "min_free_disk_mb"):  # fmt: skip
        value = flags.get(name)
        if value is not None:
            flag = "--" + name.replace("_", "-")
            cluster = replace(cluster, **{name: parse_int(value, flag, minimums.get(name, 1))})
    if flags.get("history_hours") is not None:
        cluster = replace(cluster, history_hours=parse_float(flags["history_hours"], "--history-hours"))
    if flags.get("retention_interval") is not None:
        interval = parse_float(flags["retention_interval"], "--retention-interval")
        cluster = replace(cluster, retention_interval=interval)
    if flags.get("insecure"):
        cluster = replace(cluster, insecure=True)
    check_cluster(cluster, "--heartbeat-ms")
    members = parse_peers(flags["peers"]) if flags.get("peers") else config.members
    for name in ("tls_ca", "tls_cert", "tls_key"):  # the camera's own
        if flags.get(name) is not None:
            camera = replace(camera, **{name: parse_path(flags[name], "--" + name.replace("_", "-"))})
    log = config.log
    if flags.get("log_max_mb") is not None:
        log = replace(log, max_mb=parse_float(flags["log_max_mb"], "--log-max-mb"))
    if flags.get("log_keep") is not None:
        log = replace(log, keep=parse_int(flags["log_keep"], "--log-keep"))
    tls = _tls_overrides(config.tls, flags)
    return replace(config, cluster=cluster, camera=camera, members=members, tls=tls, log=log)


def _tls_overrides(tls: TlsSettings | None, flags: dict[str, Any]) -> TlsSettings | None:
    """A node's ``--tls-ca/--tls-cert/--tls-key/--tls-crl/--public-reads`` over ``[tls]``."""
    given = {k: flags.get(f"tls_{k}") for k in ("ca", "cert", "key", "crl") if flags.get(f"tls_{k}") is not None}
    paths = {k: parse_path(v, f"--tls-{k}") for k, v in given.items()}
    if tls is None:
        if not paths:
            return None
        missing = [k for k in ("ca", "cert", "key") if k not in paths]
        if missing:
            raise ConfigError(f"--tls-{missing[0]}: missing (no [tls] table gives it)")
        tls = TlsSettings(paths.pop("ca"), paths.pop("cert"), paths.pop("key"))
    tls = replace(tls, **paths)
    if flags.get("public_reads") is not None:
        tls = replace(tls, public_reads=parse_bool(flags["public_reads"], "--public-reads"))
    if flags.get("tls_handshake_timeout") is not None:
        tls = replace(tls, handshake_timeout=parse_float(flags["tls_handshake_timeout"], "--tls-handshake-timeout"))
    return tls
