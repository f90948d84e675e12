"""The deterministic simulation of RaftCore peers (DESIGN.md: the testing pyramid).

- :mod:`.cluster`: cores on an in-memory network, driven with the same calls the
  daemon's driver makes (snapshots included);
- :mod:`.checker`: Raft's safety properties, checked after every step;
- :mod:`.simulation`: random faults, membership changes, transfers and compaction
  over many seeds (``python -m parkd.raft.sim``).

Pure like the core: no Twisted, no SQL, no clock; randomness from seeds.
"""

from parkd.raft.testing.checker import SafetyChecker, SafetyViolation
from parkd.raft.testing.cluster import SIM_CONFIG, Cluster, SimStorage, drain, entries_with_terms
from parkd.raft.testing.simulation import FAULTS, SimResult, Simulation, format_failure, main, run_seeds

__all__ = [
    "FAULTS",
    "SIM_CONFIG",
    "Cluster",
    "SafetyChecker",
    "SafetyViolation",
    "SimResult",
    "SimStorage",
    "Simulation",
    "drain",
    "entries_with_terms",
    "format_failure",
    "main",
    "run_seeds",
]
