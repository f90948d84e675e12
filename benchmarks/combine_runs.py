"""Several ``make bench`` tables side by side, with the medians over the runs (README's "Current figures").

    python benchmarks/combine_runs.py run28.out run29.out run30.out > combined.md

Each file is what ``make bench`` printed (its table; other lines are skipped); a run
is named by the last number in its file name.  For each row: every run's value, the
median of the values, of etcd's and of the parkd/etcd ratios (each ratio was taken
within its run), figure by figure for cells like ``p50 / p99``.  With an odd number
of runs a median is the middle run's own text; a cell that is not a number (the
disk sizes, a description) has no median unless all runs agree.
"""

from __future__ import annotations

import re
import statistics
import sys

Cells = tuple[str, str, str, str]  # value, etcd, parkd/etcd, target


def read_table(text: str) -> dict[str, Cells]:
    """The rows of a printed bench table, by label, in order."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| measure "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 5:
            rows[cells[0]] = tuple(cells[1:])
    return rows


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("%"))
    except ValueError:
        return None


def median_cell(cells: list[str]) -> str:
    """The median of each `` / ``-separated figure over the runs' cells ("" where there is none)."""
    split = [cell.split(" / ") for cell in cells if cell not in ("", "—")]
    if not split or len({len(figures) for figures in split}) != 1:
        return ""
    out = []
    for texts in zip(*split):
        numbers = [_number(text) for text in texts]
        if None in numbers:
            if len(set(texts)) != 1:
                return ""
            out.append(texts[0])
            continue
        median = statistics.median(numbers)
        middle = [text for text, number in zip(texts, numbers) if number == median]
        decimals = max(len(text.partition(".")[2]) for text in texts)
        grouping = "," if any("," in text for text in texts) else ""
        out.append(middle[0] if middle else f"{median:{grouping}.{decimals}f}")
    return " / ".join(out)


def combine(tables: dict[str, dict[str, Cells]]) -> str:
    """A markdown table: the first run's rows, a column per run, then the medians and the target."""
    names = list(tables)
    first = tables[names[0]]
    lines = ["| measure | " + " | ".join(f"run {n}" for n in names) + " | median | etcd (median) | "
             "parkd/etcd (median) | target |", "|---" * (len(names) + 5) + "|"]  # fmt: skip
    for label, (_, _, _, target) in first.items():
        runs = [tables[n].get(label, ("", "", "", "")) for n in names]
        medians = [median_cell([run[i] for run in runs]) for i in range(3)]
        lines.append("| " + " | ".join([label, *(run[0] for run in runs), *medians, target]) + " |")
    return "\n".join(lines)


def run_name(path: str) -> str:
    numbers = re.findall(r"\d+", path.rsplit("/", 1)[-1])
    return numbers[-1] if numbers else path


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: combine_runs.py BENCH_OUTPUT [BENCH_OUTPUT ...]", file=sys.stderr)
        return 2
    tables = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                table = read_table(f.read())
        except OSError as e:
            print(f"combine_runs: cannot read {path}: {e.strerror}", file=sys.stderr)
            return 1
        if not table:
            print(f"combine_runs: {path} holds no bench table (is it what `make bench` printed?)", file=sys.stderr)
            return 1
        tables[run_name(path)] = table
    print(combine(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
