"""``parkctl``: the operator's tool (CONTRACT §7), over the nodes' HTTP API.

    parkctl [--cluster HOST:PORT,... | --config FILE] [--json] status | lots | cameras
    parkctl ... add-node [--no-wait] ID RAFT CLIENT HTTP | remove-node ID | transfer-leader [ID]
    parkctl pki init DIR | issue DIR node|camera|operator ... | revoke DIR IDENTITY   (parkd.trust.cli)
    parkctl ... camera list | camera disable ID | camera enable ID
    parkctl ... backup FILE | restore FILE --config CFG --id N --data-dir DIR        (ctl_backup.py)

Where the cluster is: ``--cluster`` (HTTP addresses), else ``--config`` (the
``http`` address of every ``[[node]]``), else ``$PARKD_CLUSTER``, else
``etc/parkd.toml`` if it exists.  Any reachable node will do: reads are
linearizable on every node, and a node that cannot answer (503: no leader it
can reach) is left for the leader it names, then for the next address.
Membership changes, leadership transfer and the camera registry are POSTs to
``/api/v1/admin/...`` on the leader: a follower answers 421 naming the leader,
and parkctl follows.

Exit status: 0 success, 1 the cluster refused or could not answer, 2 usage
error; failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime

from parkd import __version__
from parkd.config import Address, ConfigError, load_config, parse_address, parse_cluster_addresses
from parkd.ctl_backup import add_backup_commands, cmd_backup, cmd_restore
from parkd.ctl_client import DEFAULT_TIMEOUT, ClusterClient, NodeError, Refused
from parkd.trust import TrustError, https_client_context
from parkd.trust.cli import add_pki_commands, run_pki
from parkd.wire import PROTOCOL_VERSION

DEFAULT_CONFIG = os.path.join("etc", "parkd.toml")
ENV_CLUSTER = "PARKD_CLUSTER"
ENV_CA, ENV_CERT, ENV_KEY = "PARKD_TLS_CA", "PARKD_CERT", "PARKD_KEY"
DEFAULT_CHANGE_TIMEOUT = 30.0  # seconds a membership change, transfer or registry change may take
DEFAULT_BACKUP_TIMEOUT = 300.0  # seconds a backup may go without a byte (the leader copies the state first)
MAX_CAMERA_ID = (1 << 32) - 1

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Exit 2: the command line (or the config it names) is wrong."""


# ------------------------------------------------------------------ output


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [headers] + cells
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def when(seconds: float | None, now: float) -> str:
    if seconds is None:
        return "never"
    stamp = datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")
    age = max(0.0, now - seconds)
    if age < 90:
        ago = f"{age:.0f}s ago"
    elif age < 5400:
        ago = f"{age / 60:.0f}min ago"
    else:
        ago = f"{age / 3600:.0f}h ago"
    return f"{stamp} ({ago})"


# ------------------------------------------------------------------ commands


def show(args, doc: dict, out, headers: list[str], rows) -> int:
    """``doc`` as JSON with --json, else as a table of ``rows(doc, now)``."""
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(table(headers, rows(doc, time.time())), file=out)
    return EXIT_OK


def cmd_lots(args, cluster: ClusterClient, out) -> int:
    def rows(doc, now):
        return [[x["id"], x["free"], x["capacity"], x["cameras"], when(x["updated_at"], now)] for x in doc["lots"]]

    return show(args, cluster.read("/api/v1/lots"), out, ["LOT", "FREE", "CAPACITY", "CAMERAS", "UPDATED"], rows)


def cmd_cameras(args, cluster: ClusterClient, out) -> int:
    def rows(doc, now):
        return [
            [c["camera_id"], c["lot"], c["free"], c["last_seq"], when(c["last_seen"], now), c["status"]]
            for c in doc["cameras"]
        ]

    headers = ["CAMERA", "LOT", "FREE", "LAST SEQ", "LAST SEEN", "STATUS"]
    return show(args, cluster.read("/api/v1/cameras"), out, headers, rows)


def cmd_camera(args, cluster: ClusterClient, out) -> int:
    """``camera list | disable ID | enable ID``: the camera registry (CONTRACT §9)."""
    if args.camera_command == "list":

        def rows(doc, now):
            return [
                [c["camera_id"], c["lot"], "yes" if c["enabled"] else "no (disabled)", c["incarnation"], c["free"],
                 c["last_seq"], when(c["last_seen"], now), c["status"]]
                for c in doc["cameras"]
            ]  # fmt: skip

        headers = ["CAMERA", "LOT", "ENABLED", "INCARNATION", "FREE", "LAST SEQ", "LAST SEEN", "STATUS"]
        return show(args, cluster.read("/api/v1/cameras"), out, headers, rows)
    enable = args.camera_command == "enable"
    path = "/api/v1/admin/camera-enable" if enable else "/api/v1/admin/camera-disable"
    doc = cluster.change(path, {"id": args.id, "timeout": args.timeout}, args.timeout)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    elif enable:
        print(f"camera {args.id} enabled (index {doc['index']}): it sends the frames it kept", file=out)
    else:
        print(f"camera {args.id} disabled (index {doc['index']}): its frames are refused and kept in its outbox "
              f"until `parkctl camera enable {args.id}`", file=out)  # fmt: skip
    return EXIT_OK


def status_document(views: dict[str, dict | NodeError]) -> dict:
    """Who is up, who leads, how far each node is (match index from the leader's view)."""
    answered = {address: v for address, v in views.items() if isinstance(v, dict)}
    leaders = [v for v in answered.values() if v["role"] == "leader"]
    leader = max(leaders, key=lambda v: v["term"]) if leaders else None
    members = {}
    for view in answered.values():
        for m in view["members"]:
            if m.get("http"):
                members.setdefault(m["http"], m)
    for address in views:
        members.setdefault(address, {"id": None, "http": address})
    matches = {m["id"]: m["match_index"] for m in leader["members"]} if leader else {}
    learners = {m["id"] for m in leader["members"] if m.get("membership") == "learner"} if leader else set()
    member_ids = {m["id"] for m in leader["members"]} if leader else None
    last_index = leader.get("last_index") if leader else None
    nodes = []
    for address, member in sorted(members.items(), key=lambda kv: (kv[1]["id"] is None, kv[1]["id"] or 0, kv[0])):
        view = views.get(address)
        node = {"id": member["id"], "http": address, "reachable": isinstance(view, dict)}
        if isinstance(view, dict):
            node.update({k: view[k] for k in ("role", "term", "leader_id", "commit_index", "last_applied")})
        else:
            node["error"] = str(view) if view is not None else "not asked"
        if member_ids is not None and isinstance(view, dict):
            node_id = view["node_id"]
            node["membership"] = "learner" if node_id in learners else "voter" if node_id in member_ids else None
        match = matches.get(member["id"])
        node["match_index"] = match
        node["lag"] = None if match is None or last_index is None else max(0, last_index - match)
        nodes.append(node)
    data_dirs = {m["id"]: m.get("data_dir") for m in leader["members"]} if leader else {}
    for node in nodes:
        node["data_dir"] = data_dirs.get(node["id"])  # the leader's view: "ok", "changed", "unknown"
    ids = {v.get("cluster_id") for v in answered.values()} - {None}
    return {
        "leader_id": leader["node_id"] if leader else None,
        "term": max((v["term"] for v in answered.values()), default=None),
        "cluster_id": (leader or {}).get("cluster_id") or (min(ids) if ids else None),
        "cluster_ids": sorted(ids),  # more than one: nodes of different clusters answered
        "nodes": nodes,
    }


def cmd_status(args, cluster: ClusterClient, out) -> int:
    views = cluster.views()
    doc = status_document(views)
    if not any(n["reachable"] for n in doc["nodes"]):
        problems = "; ".join(f"{n['http']}: {n['error']}" for n in doc["nodes"])
        raise Refused(f"no node answered ({problems})")
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
        return EXIT_OK
    rows = []
    for n in doc["nodes"]:
        if n["reachable"]:
            role = n["role"] + (" *" if n["id"] == doc["leader_id"] else "")
            if "membership" in n and n["membership"] != "voter":
                role += " (learner)" if n["membership"] == "learner" else " (not a member)"
            numbers = [n[k] for k in ("term", "commit_index", "last_applied", "match_index", "lag")]
            rows.append([n["id"], n["http"], role, *numbers])
        else:
            rows.append([n["id"], n["http"], f"down ({n['error']})", None, None, None, None, None])
    print(table(["NODE", "HTTP", "ROLE", "TERM", "COMMIT", "APPLIED", "MATCH", "LAG"], rows), file=out)
    for n in doc["nodes"]:
        if n.get("data_dir") == "changed":
            print(f"node {n['id']} came back with a new data dir: the cluster refuses it; "
                  f"see README \"Disaster recovery\"", file=out)  # fmt: skip
    if doc["leader_id"] is None:
        print("leader: none known (an election is under way or a majority is down)", file=out)
    else:
        print(f"leader: node {doc['leader_id']}, term {doc['term']}", file=out)
    print(f"cluster: {doc['cluster_id'] or 'id not known yet'}"
          + (f" (nodes answered for clusters {', '.join(doc['cluster_ids'])})" if len(doc["cluster_ids"]) > 1 else ""),
          file=out)  # fmt: skip
    return EXIT_OK


def _ids(ids) -> str:
    return ", ".join(str(i) for i in ids) or "none"


def _config_line(doc: dict) -> str:
    return f"voters {_ids(doc['voters'])}; learners {_ids(doc['learners'])}"


def cmd_add_node(args, cluster: ClusterClient, out) -> int:
    body = {"id": args.id, "raft": str(args.raft), "client": str(args.client), "http": str(args.http),
            "wait": "learner" if args.no_wait else "voter", "timeout": args.timeout}  # fmt: skip
    doc = cluster.change("/api/v1/admin/add-node", body, args.timeout)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    elif doc["status"] == "voter":
        print(f"node {args.id} added and promoted to voter ({_config_line(doc)})", file=out)
    else:
        print(f"node {args.id} added as a learner; the leader promotes it to voter once it has caught up "
              f"({_config_line(doc)})", file=out)  # fmt: skip
    return EXIT_OK


def cmd_remove_node(args, cluster: ClusterClient, out) -> int:
    doc = cluster.change("/api/v1/admin/remove-node", {"id": args.id, "timeout": args.timeout}, args.timeout)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(f"node {args.id} removed ({_config_line(doc)}); stop its process", file=out)
    return EXIT_OK


def cmd_transfer_leader(args, cluster: ClusterClient, out) -> int:
    body = {"timeout": args.timeout} if args.id is None else {"id": args.id, "timeout": args.timeout}
    doc = cluster.change("/api/v1/admin/transfer-leader", body, args.timeout)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    elif doc.get("cancelled") is not None:
        print(f"node {doc['leader_id']} stays the leader: the transfer to node {doc['cancelled']} is cancelled",
              file=out)  # fmt: skip
    elif doc["previous_leader_id"] == doc["leader_id"]:
        print(f"node {doc['leader_id']} is already the leader (term {doc['term']})", file=out)
    else:
        print(f"leadership moved from node {doc['previous_leader_id']} to node {doc['leader_id']}", file=out)
    return EXIT_OK


COMMANDS = {
    "status": cmd_status,
    "lots": cmd_lots,
    "cameras": cmd_cameras,
    "add-node": cmd_add_node,
    "remove-node": cmd_remove_node,
    "transfer-leader": cmd_transfer_leader,
    "camera": cmd_camera,
}
ADMIN_COMMANDS = ("add-node", "remove-node", "transfer-leader", "camera disable", "camera enable")


# ------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see parkctl --help)")


def _common(parser, suppress: bool) -> None:
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument(
        "--cluster", metavar="HOST:PORT,...", default=default(None), help="HTTP addresses of nodes (any subset)"
    )
    parser.add_argument(
        "--config", metavar="FILE", default=default(None), help="read the nodes' HTTP addresses from a parkd config"
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON for scripts")
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", default=default(None),
        help=f"per-request timeout (default {DEFAULT_TIMEOUT:g}); for add-node, remove-node, transfer-leader and "
        f"camera disable/enable how long the change may take (default {DEFAULT_CHANGE_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument("--tls-ca", metavar="FILE", default=default(None),
                        help=f"the cluster's CA certificate: talk HTTPS (default ${ENV_CA}, else the config's [tls] ca)")
    parser.add_argument("--cert", metavar="FILE", default=default(None),
                        help=f"an operator certificate, for admin commands (default ${ENV_CERT})")
    parser.add_argument("--key", metavar="FILE", default=default(None), help=f"its key (default ${ENV_KEY})")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="parkctl",
        description="Inspect and steer a parkd cluster over its HTTP API.",
        epilog=f"Without --cluster or --config: ${ENV_CLUSTER}, else {DEFAULT_CONFIG}. "
        "Exit status: 0 ok, 1 refused or unreachable, 2 usage error.",
    )
    _common(top, suppress=False)
    top.add_argument("--version", action="version", version=f"parkctl {__version__} (raft protocol {PROTOCOL_VERSION})")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    helps = {
        "status": "members, roles, terms, commit and applied index, replication",
        "lots": "free spaces per lot",
        "cameras": "cameras with their last frame and status",
    }
    for name, text in helps.items():
        _common(sub.add_parser(name, help=text, description=text), suppress=True)
    add = sub.add_parser(
        "add-node", help="add a member (start it first with --join)",
        description="Add node ID with its raft, client and HTTP addresses (host:port each). It joins as a "
        "learner; the leader promotes it to voter once it has caught up. Start it first with "
        "`twistd parkd node --join`. Waits for the promotion unless --no-wait.",
    )  # fmt: skip
    add.add_argument("id", type=_node_id)
    add.add_argument("raft", type=_host_port("RAFT"))
    add.add_argument("client", type=_host_port("CLIENT"))
    add.add_argument("http", type=_host_port("HTTP"))
    add.add_argument("--no-wait", action="store_true", help="return once added as a learner")
    remove = sub.add_parser(
        "remove-node", help="remove a member (the leader too: it steps down)",
        description="Remove node ID (a voter or learner). Refused when it would leave no voter or no reachable "
        "majority, or while another change is pending. Stop the node's process afterwards.",
    )  # fmt: skip
    remove.add_argument("id", type=_node_id)
    transfer = sub.add_parser(
        "transfer-leader", help="hand leadership to a voter (default: the most up-to-date)",
        description="Hand leadership to voter ID, or to the most up-to-date voter; waits until it leads.",
    )  # fmt: skip
    transfer.add_argument("id", type=_node_id, nargs="?")
    for p in (add, remove, transfer):
        _common(p, suppress=True)
    camera = sub.add_parser(
        "camera", help="the camera registry: list, disable or enable cameras",
        description="List the cameras with their incarnation and whether they are enabled, or disable / enable "
        "one through the Raft log. A disabled camera's frames are refused; it keeps them and sends them once "
        "enabled (to shut a camera out for good, revoke its certificate).",
    )  # fmt: skip
    _common(camera, suppress=True)
    cameras = camera.add_subparsers(dest="camera_command", metavar="list|disable|enable", parser_class=_Parser)
    cameras.required = True
    _common(cameras.add_parser("list", help="cameras, enabled or not, and their incarnation"), suppress=True)
    for name, text in (("disable", "refuse the camera's frames until enabled"), ("enable", "accept them again")):
        command = cameras.add_parser(name, help=text, description=f"{name.capitalize()} camera ID: {text}.")
        command.add_argument("id", type=_camera_id)
        _common(command, suppress=True)
    add_backup_commands(sub, _common, _node_id)
    add_pki_commands(sub)
    return top


def _camera_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= MAX_CAMERA_ID:
        raise argparse.ArgumentTypeError(f"invalid camera id {text!r} (a whole number in 1..{MAX_CAMERA_ID})")
    return int(text)


def _node_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 1 << 32:
        raise argparse.ArgumentTypeError(f"invalid node id {text!r} (a whole number in 1..{(1 << 32) - 1})")
    return int(text)


def _host_port(what: str):
    def parse(text: str) -> Address:
        try:
            return parse_address(text, what)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = what
    return parse


def find_cluster(args, environ) -> tuple[tuple[Address, ...], str | None]:
    """The nodes' HTTP addresses, and the CA certificate of the config that named them (if any)."""
    if args.cluster is not None and args.config is not None:
        raise UsageError("give --cluster or --config, not both")
    try:
        if args.cluster is not None:
            return parse_cluster_addresses(args.cluster), None
        if args.config is not None:
            return _from_config(args.config, "--config")
        if environ.get(ENV_CLUSTER):
            try:
                return parse_cluster_addresses(environ[ENV_CLUSTER]), None
            except ConfigError as e:
                raise UsageError(f"${ENV_CLUSTER}: {e}") from None
        if os.path.exists(DEFAULT_CONFIG):
            return _from_config(DEFAULT_CONFIG, DEFAULT_CONFIG)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    raise UsageError(f"where is the cluster? give --cluster HOST:PORT,..., --config FILE or ${ENV_CLUSTER}")


def _from_config(path: str, what: str) -> tuple[tuple[Address, ...], str | None]:
    config = load_config(path)
    if not config.members:
        raise UsageError(f"{what}: {path} lists no [[node]]")
    return tuple(m.http for m in config.members), config.tls.ca if config.tls is not None else None


def tls_context(args, environ, config_ca: str | None):
    """An HTTPS context when a CA is known (flag, environment, config), else None (plain HTTP)."""
    ca = args.tls_ca or environ.get(ENV_CA) or config_ca
    cert = args.cert or environ.get(ENV_CERT)
    key = args.key or environ.get(ENV_KEY)
    if ca is None:
        if cert or key:
            raise UsageError(f"--cert/--key need the cluster's CA too: give --tls-ca (or ${ENV_CA})")
        return None
    try:
        return https_client_context(ca, cert, key)
    except TrustError as e:
        raise UsageError(f"TLS: {e}") from None


def main(argv=None, out=None, err=None, environ=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    environ = os.environ if environ is None else environ
    try:
        args = parser().parse_args(argv)
        if args.command == "pki":  # local files only: no cluster
            return run_pki(args, out, err)
        if args.command == "restore":  # offline: local files only
            return cmd_restore(args, out, err)
        if args.timeout is None:
            command = " ".join(filter(None, (args.command, getattr(args, "camera_command", None))))
            args.timeout = DEFAULT_CHANGE_TIMEOUT if command in ADMIN_COMMANDS else DEFAULT_TIMEOUT
            args.timeout = DEFAULT_BACKUP_TIMEOUT if command == "backup" else args.timeout
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        addresses, config_ca = find_cluster(args, environ)
        cluster = ClusterClient(addresses, args.timeout, tls_context(args, environ, config_ca))
        if args.command == "backup":
            return cmd_backup(args, cluster, out, err)
        return COMMANDS[args.command](args, cluster, out)
    except UsageError as e:
        print(f"parkctl: {e}", file=err)
        return EXIT_USAGE
    except Refused as e:
        print(f"parkctl: {e}", file=err)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("parkctl: interrupted", file=err)
        return EXIT_REFUSED
    except BrokenPipeError:  # `parkctl lots | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
