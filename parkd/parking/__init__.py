"""The parking state machine (DESIGN layer 3): frames' results applied to SQLite tables.

Nothing here knows Twisted: the node feeds committed Raft entries to
:class:`~parkd.parking.state.ParkingState` and reads its tables back for the HTTP API.
"""
