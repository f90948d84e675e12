"""Two short seeded fault schedules on a real cluster (issue 7; `make soak` runs 50 long ones).

Each schedule has 22 s of faults from its first ack (as long as the whole test
took when its 25 s window still included start-up).  One fault with its hold and
settling takes 1.5-3 s (more for a full-cluster restart), so a healthy run applies
6-10 of them; a run that applied fewer than MIN_FAULTS did not test what it claims
to.  Skipped faults (no leader to kill or isolate) do not count, and across the
two runs the leader itself must have been hit.  What each fault did is also seen
from outside the injector (``Run.observed``): the nodes it killed found dead of
SIGKILL, its SIGSTOPs in /proc, connections its link cuts closed or refused.
"""

from collections import Counter

from parkd.chaos.nemesis import run_schedule

MIN_FAULTS = 4


def test_two_seeded_fault_schedules_lose_nothing(tmp_path):
    kinds = Counter()
    for seed in (1, 2):
        run = run_schedule(seed, duration=22, workdir=str(tmp_path / f"seed-{seed}"))
        applied = ", ".join(f"{kind} {n}" for kind, n in run.by_kind().items() if n)
        print(f"\nnemesis seed {seed}: {len(run.effective)} faults ({applied}), {len(run.skipped)} skipped, "
              f"{run.acked} acked, {run.fault_seconds:.0f}s of faults, {run.seconds:.0f}s in all, "
              f"observed {dict(run.observed)}: {[str(f) for f in run.faults]}")  # fmt: skip
        assert run.violations == [], f"seed {seed}: {run.violations}"
        assert run.acked > 0
        assert len(run.effective) >= MIN_FAULTS, f"seed {seed}: {len(run.effective)} faults took effect: {run.faults}"
        assert_faults_took_effect(run)
        kinds += run.by_kind()
    assert kinds["kill-leader"] + kinds["isolate-leader"] >= 1, f"the leader was never hit: {dict(kinds)}"


def assert_faults_took_effect(run) -> None:
    kinds, seen = run.by_kind(), run.observed
    assert seen["killed"] >= kinds["kill-leader"] + kinds["kill-follower"], f"seed {run.seed}: {seen}, {kinds}"
    assert seen["stopped"] >= kinds["pause"], f"seed {run.seed}: {seen}, {kinds}"
    assert seen["exited"] >= 3 * kinds["full-restart"], f"seed {run.seed}: {seen}, {kinds}"
    cuts = kinds["partition"] + kinds["isolate-leader"] + kinds["one-way"]
    assert seen["links_dropped"] >= cuts, f"seed {run.seed}: {seen}, {kinds}"
