"""Two short seeded fault schedules on a real cluster (issue 7; `make soak` runs 50 long ones)."""

from parkd.chaos.nemesis import run_schedule


def test_two_seeded_fault_schedules_lose_nothing(tmp_path):
    for seed in (1, 2):
        run = run_schedule(seed, duration=25, workdir=str(tmp_path / f"seed-{seed}"))
        print(f"\nnemesis seed {seed}: {len(run.faults)} faults, {run.acked} acked, {run.seconds:.0f}s: {run.faults}")
        assert run.acked > 0
        assert run.violations == [], f"seed {seed}: {run.violations}"
