"""Eager writes on a TCP transport: ``send`` at once when nothing is queued.

Twisted's TCP transport never writes in ``write()``: it queues the bytes, asks
epoll for writability (``epoll_ctl``), sends on the next poll and asks epoll to
stop (``epoll_ctl`` again).  On the ack path every message paid that: per ack
the leader made 9 ``sendto`` and 17 ``epoll_ctl`` calls, and with one frame in
flight each node spent about 2 ms of CPU per ack.  :func:`send_eagerly` tries
``send`` at once when a TCP connection's queue is empty (as asyncio's transports
do); what the socket does not take, and everything while something is queued,
goes the usual way, so the order of the bytes is unchanged.  The framing
protocol (``parkd/wire.py``) writes this way, and asks a TLS wrapper under it
(:class:`EagerWrites`: ``parkd/trust/guard.py``) to write its records so too.  Measured with the
latency bench (TLS, medians of 3 rounds, two before/after pairs): ack p50 with
the camera on the leader 5.11 -> 3.97 and 4.96 -> 4.60 ms, on a follower
5.88 -> 4.64 and 5.60 -> 5.03 ms, CPU per ack over the three nodes 7.65 -> 6.36
and 7.59 -> 7.44 ms; durable throughput unchanged within the noise.
"""

from __future__ import annotations

from twisted.internet import tcp


class EagerWrites:
    """A transport wrapper (TLS) that writes its bytes with :func:`send_eagerly` once asked to."""

    eager_writes = False  # set by the protocol above it (the framing protocol sets it)


def write_eagerly_on(transport) -> None:
    """Ask ``transport`` to let small writes out at once: TCP_NODELAY (a TLS wrapper passes it
    on), and a TLS wrapper's records sent eagerly (:class:`EagerWrites`)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)
    if isinstance(transport, EagerWrites):
        transport.eager_writes = True


def send_eagerly(transport, data: bytes) -> None:
    """Write ``data`` to ``transport``: a TCP connection with nothing queued ``send``s it at once."""
    if data and isinstance(transport, tcp.Connection) and _nothing_queued(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN: full; anything else: the queued write meets it and closes as usual
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _nothing_queued(connection: tcp.Connection) -> bool:
    """Whether ``connection`` is open for writing with no bytes of its own waiting (Twisted's internals)."""
    return bool(
        connection.connected
        and not connection.disconnecting
        and not connection._writeDisconnected
        and len(connection.dataBuffer) == connection.offset
        and not connection._tempDataLen
    )
