"""The Raft layer: a pure core (no I/O) and the storage behind it."""
