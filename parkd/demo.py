"""``make demo``: a local cluster and one camera per lot, until Ctrl-C.

Every node of the config file and one camera per ``[[lot]]`` run as their own
``twistd`` process; logs go to ``run/demo/``.  Ctrl-C (or SIGTERM) stops them
all with SIGTERM and waits for each to exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from parkd.config import ConfigError, load_config
from parkd.launcher import Timeout, camera_daemon, node_daemon, wait_listening


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

    nodes = [node_daemon(args.config, m.id, args.workdir) for m in config.members]
    cameras = [
        camera_daemon(args.config, i, lot.id, args.workdir, "--interval", args.interval)
        for i, lot in enumerate(config.lots, start=1)
    ]
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for daemon in nodes + cameras:
            daemon.start()
        for member, daemon in zip(config.members, nodes):
            wait_listening(config, member.id, daemon)
        print(f"parkd demo: {len(nodes)} nodes and {len(cameras)} cameras running; logs in {args.workdir}/")
        for member, daemon in zip(config.members, nodes):
            print(f"  node {member.id}: dashboard http://{member.http}/  log {daemon.log_path}")
        for daemon in cameras:
            print(f"  {daemon.name}: log {daemon.log_path}")
        print("Press Ctrl-C to stop.")
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
            code = daemon.stop()
            print(f"  {daemon.name} stopped (exit {code})")


def _raise_interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
