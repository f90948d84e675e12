"""README's "Current figures" table from several ``make bench`` outputs (benchmarks/combine_runs.py)."""

from __future__ import annotations

import os
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import combine_runs  # noqa: E402


def printed(ack: str, etcd: str, ratio: str, rate: str, disk: str) -> str:
    """What ``make bench`` prints, around its table (the widths are padded as bench.py pads them)."""
    return "\n".join([
        "measuring latency (round 1 of 3) …",
        "| measure                          | value | etcd | parkd/etcd | target |",
        "|----------------------------------|-------|------|------------|--------|",
        f"| Ack p50 / p99 (ms)               | {ack} | {etcd} | {ratio} | p50 ≤ etcd |",
        f"| Durable throughput (frames/s)    | {rate} |  |  | ≥ 5,000 |",
        f"| Disk per node (MB)               | {disk} |  |  |  |",
        "etcd 3.4.23 (go1.19.8): 3 members on 127.0.0.1",
    ])


def test_three_runs_give_each_runs_value_and_the_middle_runs_own_text_figure_by_figure(tmp_path):
    outputs = [printed("2.15 / 4.125", "1.17 / 2.27", "1.84", "13,155", '{"1": 276.0}'),
               printed("2.57 / 6.205", "1.71 / 3.12", "1.50", "13,207", '{"1": 290.0}'),
               printed("1.735 / 3.21", "1.15 / 2.0", "1.51", "14,960", '{"1": 277.4}')]  # fmt: skip
    paths = []
    for n, text in zip((28, 29, 30), outputs):
        paths.append(tmp_path / f"bench-i15-{n}.out")
        paths[-1].write_text(text)
    tables = {combine_runs.run_name(str(p)): combine_runs.read_table(p.read_text()) for p in paths}
    lines = combine_runs.combine(tables).splitlines()
    assert lines[0] == "| measure | run 28 | run 29 | run 30 | median | etcd (median) | parkd/etcd (median) | target |"
    assert lines[2] == ("| Ack p50 / p99 (ms) | 2.15 / 4.125 | 2.57 / 6.205 | 1.735 / 3.21 | 2.15 / 4.125 "
                        "| 1.17 / 2.27 | 1.51 | p50 ≤ etcd |")  # fmt: skip
    assert lines[3].endswith("| 14,960 | 13,207 |  |  | ≥ 5,000 |")
    assert lines[4].endswith('| {"1": 277.4} |  |  |  |  |')  # sizes by node: no median
    assert len(lines) == 5


def test_an_even_count_gives_the_mean_of_the_middle_two_as_the_runs_wrote_their_figures():
    assert combine_runs.median_cell(["0.755 / 1.58", "0.745 / 1.425"]) == "0.750 / 1.502"
    assert combine_runs.median_cell(["1022432", "1022429"]) == "1022430"
    assert combine_runs.median_cell(["13,155", "13,208"]) == "13,182"
    assert combine_runs.median_cell(["100%", "100%"]) == "100%"
    assert combine_runs.median_cell(["", "—"]) == ""
    assert combine_runs.median_cell(["1 / 2", "3"]) == ""  # figures that do not line up


def test_a_file_without_a_table_or_missing_is_refused_with_what_to_check(tmp_path, capsys):
    empty = tmp_path / "bench-1.out"
    empty.write_text("measuring throughput …\nTraceback (most recent call last):\n")
    assert combine_runs.main([str(empty)]) == 1
    assert "holds no bench table (is it what `make bench` printed?)" in capsys.readouterr().err
    assert combine_runs.main([str(tmp_path / "missing.out")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert combine_runs.main([]) == 2
