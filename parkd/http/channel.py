"""The HTTP port's connections: each response leaves in one write, at once.

twisted.web's channel writes a response's status line and headers, then its
body, each with a write of its own, and the TCP transport sends what it was
given on its next poll (after two ``epoll_ctl`` calls, :mod:`parkd.sockets`).
A linearizable read, answered from the read barrier's callback, so waited for
the next reactor turn, and over TLS its head and body went out as two records.
:class:`EagerHTTPChannel` holds the head until the body's first write (or the
end of the request: a HEAD, a 204) and writes the two as one, eagerly: ``send``
at once on a TCP connection with nothing queued, or through a TLS wrapper asked
for eager writes.  JSON answers carry a ``Content-Length``
(:func:`parkd.http.errors.json_response`), so one written later is not chunked
(a second write for the last chunk) either.

Measured, two HTTPS clusters side by side (8 pairs each): a linearizable read
with one client, p50 from the leader 1.50 -> 1.115 ms, from a follower 1.835 ->
1.585 ms (each better in 7 of 8); 16 clients on the leader 1,978 -> 2,260
reads/s (7 of 8), its CPU per read 0.377 -> 0.334 ms.
"""

from __future__ import annotations

from twisted.web import http
from twisted.web.http_headers import Headers

from parkd.sockets import EagerWrites, send_eagerly, write_eagerly_on


class EagerHTTPChannel(http.HTTPChannel):
    """twisted.web's HTTP/1.1 channel with the head held for the body and eager writes."""

    _head: bytes | None = None  # the status line and headers, until the body's first write

    def connectionMade(self):
        write_eagerly_on(self.transport)  # a large answer written in parts waits for no ACK between them
        super().connectionMade()

    def writeHeaders(self, version, code, reason, headers):
        """As twisted.web's, but held until :meth:`write` (the headers were sanitized by ``Headers``)."""
        if not isinstance(headers, Headers):  # twisted.web's compatibility path
            raw, headers = headers, Headers()
            for name, value in raw:
                headers.addRawHeader(name, value)
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self._head = b"".join(head)

    def write(self, data: bytes) -> None:
        head, self._head = self._head, None
        if head is not None:
            data = head + data
        if not data:
            return
        if isinstance(self.transport, EagerWrites):
            self.transport.write(data)  # one TLS record, sent at once (eager_writes)
        else:
            send_eagerly(self.transport, data)

    def writeSequence(self, iovec) -> None:
        self.write(b"".join(iovec))

    def requestDone(self, request):
        self.write(b"")  # a head written without a body (HEAD, 204, 304)
        super().requestDone(request)
