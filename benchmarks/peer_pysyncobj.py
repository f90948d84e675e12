"""PySyncObj, 3 nodes on loopback, for comparison with parkd in the same run.

Each node is its own process holding a ``SyncObj`` with one replicated
``put(key, record)`` of a ~100-byte record (the size of a parkd frame result
plus its camera metadata).  PySyncObj has no client protocol, so the load runs
inside the leader's process: writes submitted with callbacks, a window of 2000
in flight, for ``--duration`` seconds; only commits whose callback fires in
that time count.  Library defaults: in-memory journal (no fsync at all).

Run with an interpreter that has pysyncobj (benchmarks/bench.py makes a venv).
Prints one JSON line: {"rate": committed writes per second, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

RECORD = b"r" * 100
WINDOW = 2000


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def node(port: int, peers: list[int]) -> None:
    """One cluster member; answers 'leader?' and 'load SECONDS' on stdin."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Store(SyncObj):
        def __init__(self):
            super().__init__(f"127.0.0.1:{port}", [f"127.0.0.1:{p}" for p in peers], SyncObjConf(dynamicMembershipChange=False))
            self.data = {}

        @replicated
        def put(self, key, record):
            self.data[key % 4096] = record

    store = Store()
    for line in sys.stdin:
        command = line.split()
        if command[0] == "leader?":
            leader = store._getLeader()
            print(json.dumps({"leader": str(leader) if leader else None, "me": f"127.0.0.1:{port}"}), flush=True)
        elif command[0] == "load":
            print(json.dumps(load(store, float(command[1]))), flush=True)


def load(store, seconds: float) -> dict:
    done = {"ok": 0, "in_flight": 0}
    deadline = time.monotonic() + seconds

    def callback(result, error):
        done["in_flight"] -= 1
        if error == 0 and time.monotonic() < deadline:
            done["ok"] += 1

    started = time.monotonic()
    key = 0
    while time.monotonic() < deadline:
        while done["in_flight"] < WINDOW:
            key += 1
            done["in_flight"] += 1
            store.put(key, RECORD, callback=callback)
        time.sleep(0.001)  # let the SyncObj thread work
    return {"rate": round(done["ok"] / (time.monotonic() - started), 1), "committed": done["ok"], "window": WINDOW}


def orchestrate(duration: float) -> dict:
    ports = free_ports(3)
    procs = [
        subprocess.Popen([sys.executable, __file__, "node", str(p), ",".join(str(q) for q in ports if q != p)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        for p in ports
    ]
    try:
        deadline = time.monotonic() + 30
        leader = None
        while leader is None and time.monotonic() < deadline:
            for proc in procs:
                proc.stdin.write("leader?\n")
                proc.stdin.flush()
                answer = json.loads(proc.stdout.readline())
                if answer["leader"] == answer["me"]:
                    leader = proc
            time.sleep(0.2)  # bounded by the deadline above
        if leader is None:
            raise SystemExit("PySyncObj elected no leader in 30 s")
        leader.stdin.write("load 1\n")  # warm-up
        leader.stdin.flush()
        leader.stdout.readline()
        leader.stdin.write(f"load {duration}\n")
        leader.stdin.flush()
        return json.loads(leader.stdout.readline())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        node(int(sys.argv[2]), [int(p) for p in sys.argv[3].split(",")])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workdir", default=".")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print(json.dumps(orchestrate(args.duration)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
