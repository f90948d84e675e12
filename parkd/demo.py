"""``make demo``: a local cluster and one camera per lot, until Ctrl-C.

Every node of the config file and one camera per ``[[lot]]`` run as their own
``twistd`` process; logs go to ``run/demo/``.  Once a leader is elected the
demo prints each node's dashboard URL and a ``parkctl status`` table.  Ctrl-C
(or SIGTERM) stops them all with SIGTERM and waits for each to exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from parkd import ctl
from parkd.config import ConfigError, load_config
from parkd.launcher import Timeout, camera_daemon, get_json, make_pki, node_daemon, port_open, wait_for, wait_listening

LEADER_TIMEOUT = 30.0  # seconds


def wait_for_leader(config, daemons, timeout: float = LEADER_TIMEOUT) -> int:
    """The leader's id, once a node reports one (fails early if a node exits)."""

    def leader():
        for member, daemon in zip(config.members, daemons):
            if not daemon.alive():
                raise Timeout(f"{daemon.name} exited with {daemon.proc.returncode}; see {daemon.log_path}")
            view = get_json(config, member.id, "/api/v1/cluster", timeout=1.0)
            if view is not None and view.get("leader_id") is not None:
                return view["leader_id"]
        return None

    return wait_for(leader, timeout, "a leader to be elected")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="parkd-demo", description=__doc__)
    parser.add_argument("--config", default="etc/parkd.toml")
    parser.add_argument("--workdir", default=os.path.join("run", "demo"))
    parser.add_argument("--interval", default="2", help="seconds between frames of each camera")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"parkd-demo: {e}", file=sys.stderr)
        return 1

    busy = [
        f"{address} (node {m.id} {kind})"
        for m in config.members
        for kind, address in (("raft", m.raft), ("client", m.client), ("http", m.http))
        if port_open(address.host, address.port)
    ]
    if busy:
        print(f"parkd-demo: already in use: {', '.join(busy)}; is another demo running?", file=sys.stderr)
        return 1

    pki = demo_pki(config)
    nodes = [node_daemon(args.config, m.id, args.workdir) for m in config.members]
    cameras = [
        camera_daemon(args.config, i, lot.id, args.workdir, "--interval", args.interval)
        for i, lot in enumerate(config.lots, start=1)
    ]
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Explicitly: a process started from a shell's background job inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        for daemon in nodes + cameras:
            daemon.start()
        for member, daemon in zip(config.members, nodes):
            wait_listening(config, member.id, daemon)
        leader = wait_for_leader(config, nodes)
        print(f"parkd demo: {len(nodes)} nodes and {len(cameras)} cameras running; logs in {args.workdir}/")
        scheme = "https" if pki else "http"
        for member, daemon in zip(config.members, nodes):
            mark = "  (leader)" if member.id == leader else ""
            print(f"  node {member.id}: dashboard {scheme}://{member.http}/  log {daemon.log_path}{mark}")
        for daemon in cameras:
            print(f"  {daemon.name}: log {daemon.log_path}")
        print()
        print(f"$ parkctl --config {args.config} status")
        ctl.main(["--config", args.config, "status"])
        print()
        if pki:
            print_tls_howto(pki, config.members[0].http)
        print("Every node serves the dashboard, /api/v1/... and /metrics.  Press Ctrl-C to stop.", flush=True)
        while all(d.alive() for d in nodes + cameras):
            time.sleep(1.0)
        dead = [d.name for d in nodes + cameras if not d.alive()]
        print(f"parkd demo: {', '.join(dead)} exited; see its log. Stopping the rest.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nparkd demo: stopping …")
        return 0
    except Timeout as e:
        print(f"parkd demo: {e}; see the logs in {args.workdir}/", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for daemon in cameras + nodes:
            daemon.signal(signal.SIGTERM)
        for daemon in cameras + nodes:
            code = daemon.stop(signalled=True)
            print(f"  {daemon.name} stopped (exit {code})")


def demo_pki(config) -> str | None:
    """The PKI the config's ``[tls]`` names, made once (None without TLS)."""
    if config.tls is None:
        return None
    pki = os.path.dirname(config.tls.ca)
    if not os.path.exists(config.tls.ca):
        print(f"parkd demo: making a PKI for the demo in {pki}/ (once)")
    make_pki(pki, nodes=[m.id for m in config.members], cameras=range(1, len(config.lots) + 1))
    return pki


def print_tls_howto(pki: str, http) -> None:
    """How to reach the demo's HTTPS ports with parkctl, curl and a browser."""
    rel = os.path.relpath(pki)
    operator = f"{rel}/operator-admin"
    print("Every port speaks TLS with the demo's PKI. To use it from this shell:")
    print(f"  export PARKD_TLS_CA={rel}/ca.pem PARKD_CERT={operator}.pem PARKD_KEY={operator}.key")
    print("  parkctl cameras                      # admin commands use the operator certificate")
    print(f"  curl --cacert {rel}/ca.pem https://{http}/api/v1/lots")
    print(f"  curl --cacert {rel}/ca.pem --cert {operator}.pem --key {operator}.key \\")
    print(f"       -H 'Content-Type: application/json' -d '{{}}' https://{http}/api/v1/admin/transfer-leader")
    print(f"  A browser shows the dashboard once it trusts {rel}/ca.pem (or after a warning).")
    print()


def _raise_interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
