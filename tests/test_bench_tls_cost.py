"""benchmarks/tls_message_cost.py, small: it runs, its TLS rounds are TLS, and it refuses bad arguments."""

import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "tls_message_cost.py")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


def test_it_prints_per_message_figures_and_the_tls_rounds_went_through_tls(cluster_pki):
    done = run("--round-trips", "300", "--rounds", "1", "--pki", cluster_pki.dir)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["tls_peer"] == "node-1"  # the client checked the server's node certificate
    assert figures["round_trips"] == 300 and figures["rounds"] == 1
    assert 0 < figures["plain_cpu_us_per_message"] < figures["tls_cpu_us_per_message"]
    assert figures["tls_adds_cpu_us_per_message"] == round(
        figures["tls_cpu_us_per_message"] - figures["plain_cpu_us_per_message"], 2)


def test_bad_arguments_are_refused_with_a_usage_line():
    done = run("--round-trips", "0")
    assert done.returncode == 2
    assert "--round-trips and --rounds must be at least 1" in done.stderr and "Traceback" not in done.stderr
