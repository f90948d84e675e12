"""The camera daemon: a frame source, a SQLite outbox and a node connection."""
