"""The ``twistd parkd`` plugin: ``node`` and ``camera`` sub-commands.

Options validate (``postOptions``) and turn flags plus the config file into a
settings value; :func:`makeService` only wires services together.  Databases
and listeners are opened in ``startService`` (twistd may fork after
``makeService``).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from twisted.application import service
from twisted.python import usage

from parkd.startup import fail
from parkd.trust import TrustFiles
from parkd.config import (
    Address,
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    parse_cluster_addresses,
    parse_int,
)


def check_endpoint(description: str, flag: str) -> str:
    """Reject a listening endpoint string Twisted cannot parse."""
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(None, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{flag}: bad endpoint {description!r} ({e})") from None
    return description


# --------------------------------------------------------------------- node


@dataclass(frozen=True)
class NodeSettings:
    node_id: int
    config: Config
    data_dir: str
    listen_raft: str
    listen_client: str
    listen_http: str
    log_json: str | None = None
    join: bool = False  # start as a non-member and wait to be added (parkctl add-node)
    force_new_cluster: bool = False  # become the only voter of the cluster from this data dir (CONTRACT §10)


class _ConfigOptions(usage.Options):
    """Flags shared by both daemons: a config file, JSON logs, and the cluster."""

    def load(self) -> Config:
        if not self["config"]:
            raise ConfigError("--config: required (e.g. --config etc/parkd.toml)")
        flags = {key.replace("-", "_"): value for key, value in self.items()}
        return apply_overrides(load_config(self["config"]), flags)

    def postOptions(self) -> None:
        try:
            self.settings = self.build()
        except ConfigError as e:
            fail(str(e))

    def build(self):
        raise NotImplementedError


class NodeOptions(_ConfigOptions):
    synopsis = "--config FILE --id N [options]"
    longdesc = (
        "Run one parkd processing node: the raft port (peers), the client port "
        "(cameras and tools) and the HTTP port (API, dashboard, metrics). Flags "
        "override the config file."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (see etc/parkd.toml). Required."],
        ["id", None, None, "This node's id; must be one of the [[node]] members (unless --join). Required."],
        ["data-dir", None, None, "Directory for this node's SQLite database [default: parkd-data/node-ID]."],
        ["peers", None, None, "All members as ID=RAFT/CLIENT/HTTP,... (host:port each); replaces [[node]]."],
        ["listen-raft", None, None, "Twisted endpoint for the raft port [default: the advertised raft address]."],
        ["listen-client", None, None, "Twisted endpoint for the client port [default: the advertised address]."],
        ["listen-http", None, None, "Twisted endpoint for the HTTP port [default: the advertised address]."],
        ["election-timeout-ms", None, None, "Election timeout T in ms; randomised in [T, 2T) [default: 1000]."],
        ["heartbeat-ms", None, None, "Leader heartbeat interval in ms [default: 100]."],
        ["max-message-bytes", None, None, "Largest wire message accepted or sent [default: 16 MiB]."],
        ["snapshot-entries", None, None, "Snapshot once the applied log holds this many entries [default: 100000]."],
        ["snapshot-margin", None, None, "Log entries kept below a snapshot for lagging followers [default: 10000]."],
        ["history-hours", None, None, "Hours of frame history kept (current values are kept) [default: 24]."],
        ["ready-lag", None, None, "/readyz: most entries applied behind the leader's commit index [default: 1000]."],
        ["min-free-disk-mb", None, None, "Free MiB on the data dir's filesystem below which the node raises "
                                         "the nospace alarm and refuses new frames; 0: off [default: 256]."],
        ["retention-interval", None, None, "Seconds between the leader's history trims [default: 600]."],
        ["tls-ca", None, None, "CA certificate of the cluster [default: [tls].ca]."],
        ["tls-cert", None, None, "This node's certificate; {id} expands [default: [tls].cert]."],
        ["tls-key", None, None, "This node's key; {id} expands [default: [tls].key]."],
        ["tls-crl", None, None, "Certificate revocation list (optional) [default: [tls].crl]."],
        ["public-reads", None, None, "true: reads need no client certificate; false: any of the CA [default: true]."],
        ["tls-handshake-timeout", None, None, "Seconds before an unfinished TLS handshake is cut [default: 10]."],
        ["log-json", None, None, "Also write every log event to FILE as JSON lines."],
        ["log-max-mb", None, None, "Rotate the JSON log at this size in MiB [default: [log].max_mb, 100]."],
        ["log-keep", None, None, "Rotated JSON logs kept (FILE.1 ...) [default: [log].keep, 5]."],
    ]
    optFlags = [
        ["insecure", None, "Run without TLS (plaintext on every port); logs a warning. Only without a [tls] table."],
        ["join", None, "Join a running cluster: start as a non-member that learns the membership from the "
                       "leader once added (`parkctl add-node`). The config lists the cluster's current members "
                       "(at least the leader) so this node can answer it; without a [[node]] entry of its own "
                       "give --listen-raft/--listen-client/--listen-http."],
        ["force-new-cluster", None, "Disaster recovery when a majority is lost for good: this node becomes the only "
                                    "voter of its cluster, keeping its data dir (log, state, cluster id); then add "
                                    "fresh nodes with `parkctl add-node`. See README \"Disaster recovery\"."],
    ]

    def build(self) -> NodeSettings:
        if self["id"] is None:
            raise ConfigError("--id: required (which [[node]] this process is)")
        node_id = parse_int(self["id"], "--id")
        config = self.load()
        config.check_secure()
        join = bool(self["join"])
        if join and self["force-new-cluster"]:
            raise ConfigError("--force-new-cluster and --join: a node either joins a cluster or recovers one")
        if join and node_id not in {m.id for m in config.members}:
            missing = [f for f in ("listen-raft", "listen-client", "listen-http") if not self[f]]
            if missing:
                raise ConfigError(
                    f"--join: node {node_id} has no [[node]] entry; give it one or --{missing[0]} "
                    "(and the other --listen-* flags)"
                )
            me = None
        else:
            me = config.member(node_id)
        return NodeSettings(
            node_id=node_id,
            config=config,
            data_dir=self["data-dir"] or os.path.join("parkd-data", f"node-{node_id}"),
            listen_raft=check_endpoint(self["listen-raft"] or me.raft.endpoint(), "--listen-raft"),
            listen_client=check_endpoint(self["listen-client"] or me.client.endpoint(), "--listen-client"),
            listen_http=check_endpoint(self["listen-http"] or me.http.endpoint(), "--listen-http"),
            log_json=self["log-json"],
            join=join,
            force_new_cluster=bool(self["force-new-cluster"]),
        )


# ------------------------------------------------------------------- camera


@dataclass(frozen=True)
class CameraDaemonSettings:
    camera_id: int
    lot: str
    config: Config
    cluster: tuple[Address, ...]
    state_dir: str
    log_json: str | None = None
    tls: TrustFiles | None = None  # the camera's CA, certificate and key; None: plaintext (insecure)

    @property
    def interval(self) -> float:
        return self.config.camera.interval


class CameraOptions(_ConfigOptions):
    synopsis = "--config FILE --camera-id N --lot LOT [options]"
    longdesc = (
        "Run one camera: capture a frame every --interval seconds, keep it in a "
        "SQLite outbox until a node acknowledges it, and fail over between nodes."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (see etc/parkd.toml). Required."],
        ["camera-id", None, None, "This camera's id (a whole number). Required."],
        ["lot", None, None, "The lot this camera watches; must be a [[lot]] id. Required."],
        ["interval", None, None, "Seconds between frames [default: 10, or [camera].interval]."],
        ["state-dir", None, None, "Directory for the camera's outbox [default: parkd-data/camera-ID]."],
        ["cluster", None, None, "Client addresses of the nodes, host:port,... [default: every [[node]].client]."],
        ["outbox-limit", None, None, "Most unacknowledged frames kept; the oldest are dropped [default: 10000]."],
        ["ack-timeout", None, None, "Seconds to wait for an ack before trying another node [default: 5]."],
        ["standby-spread", None, None, "TLS: start the standby sessions with the other nodes within this "
         "many seconds of connecting, so a failover resumes one; 0: none [default: 600]."],
        ["tls-ca", None, None, "CA certificate of the cluster [default: [camera].tls_ca, else [tls].ca]."],
        ["tls-cert", None, None, "This camera's certificate [default: camera-ID.pem next to the CA]."],
        ["tls-key", None, None, "This camera's key [default: camera-ID.key next to the CA]."],
        ["log-json", None, None, "Also write every log event to FILE as JSON lines."],
        ["log-max-mb", None, None, "Rotate the JSON log at this size in MiB [default: [log].max_mb, 100]."],
        ["log-keep", None, None, "Rotated JSON logs kept (FILE.1 ...) [default: [log].keep, 5]."],
    ]
    optFlags = [
        ["insecure", None, "Talk plaintext to the nodes (only for a cluster whose config says insecure = true)."],
    ]

    def build(self) -> CameraDaemonSettings:
        if self["camera-id"] is None:
            raise ConfigError("--camera-id: required")
        if not self["lot"]:
            raise ConfigError("--lot: required")
        camera_id = parse_int(self["camera-id"], "--camera-id")
        config = self.load()
        config.lot(self["lot"])
        tls = camera_tls_files(config, camera_id)
        if tls is None:
            config.check_secure()
        if self["cluster"]:
            cluster = parse_cluster_addresses(self["cluster"])
        else:
            cluster = tuple(m.client for m in config.members)
        if not cluster:
            raise ConfigError("--cluster: no node addresses (none given and no [[node]] in the config)")
        return CameraDaemonSettings(
            camera_id=camera_id,
            lot=self["lot"],
            config=config,
            cluster=cluster,
            state_dir=self["state-dir"] or os.path.join("parkd-data", f"camera-{camera_id}"),
            log_json=self["log-json"],
            tls=tls,
        )


def camera_tls_files(config: Config, camera_id: int) -> TrustFiles | None:
    """A camera's TLS files: ``[camera] tls_*`` (or the flags), else ``camera-ID`` next to ``[tls] ca``."""
    camera = config.camera
    ca = camera.tls_ca or (config.tls.ca if config.tls is not None else None)
    if ca is None:
        return None
    directory = os.path.dirname(ca)
    cert = (camera.tls_cert or os.path.join(directory, "camera-{camera_id}.pem")).replace("{camera_id}", str(camera_id))
    key = (camera.tls_key or os.path.join(directory, "camera-{camera_id}.key")).replace("{camera_id}", str(camera_id))
    crl = config.tls.crl if config.tls is not None else None
    return TrustFiles(ca, cert, key, crl)


# ------------------------------------------------------------------ plugin


class Options(usage.Options):
    synopsis = "node|camera [options]"
    longdesc = "Run a parkd node or camera. See `twistd parkd node --help` and `twistd parkd camera --help`."
    subCommands = [
        ["node", None, NodeOptions, "Run a processing node (raft, client and HTTP ports)."],
        ["camera", None, CameraOptions, "Run a camera that sends frames to the cluster."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose a sub-command: node or camera")


def makeService(options: Options, reactor=None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor
    settings = options.subOptions.settings
    if options.subCommand == "node":
        from parkd.node.gcpauses import GcService

        top = build_node_service(settings, reactor)
        GcService(reactor).setServiceParent(top)
        return top
    return build_camera_service(settings, reactor)


def build_node_service(settings: NodeSettings, reactor) -> service.MultiService:
    """The JSON log, the node, then its HTTP port (stopped in reverse order)."""
    from parkd.daemon import OnSignal, OrderedServices, logging_services
    from parkd.http.site import HttpService
    from parkd.node.service import NodeService

    top = OrderedServices()
    logging_services(top, settings, reactor)
    node = NodeService(settings, reactor)
    node.setServiceParent(top)
    HttpService(node, settings.listen_http).setServiceParent(top)
    OnSignal(signal.SIGHUP, node.reload_tls, reactor).setServiceParent(top)
    return top


def build_camera_service(settings: CameraDaemonSettings, reactor) -> service.MultiService:
    """The JSON log, then the camera (stopped in reverse order)."""
    from parkd.camera.service import CameraService
    from parkd.daemon import OnSignal, OrderedServices, logging_services

    top = OrderedServices()
    logging_services(top, settings, reactor)
    camera = CameraService(settings, reactor)
    camera.setServiceParent(top)
    OnSignal(signal.SIGHUP, camera.reload_tls, reactor).setServiceParent(top)
    return top
