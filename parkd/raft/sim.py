"""``python -m parkd.raft.sim``: the randomized simulation (see parkd.raft.testing)."""

import sys

from parkd.raft.testing.simulation import main

if __name__ == "__main__":
    sys.exit(main())
