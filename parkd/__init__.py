"""parkd: a fault-tolerant, Raft-replicated parking-availability service."""

__version__ = "0.1.0"
