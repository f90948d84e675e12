"""The node daemon: Twisted glue around the Raft core and the parking state."""
