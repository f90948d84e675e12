"""parkctl's client for the nodes' HTTP API: one node at a time, following the leader.

:class:`ClusterClient` reads from the first node that can answer (a node that
knows no leader is left for the leader it names) and sends admin requests to
the leader (a follower's 421 names it).  :class:`NodeError` is one node's
failure; :class:`Refused` means no node could, or would, do it (exit 1).
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from parkd.config import Address

DEFAULT_TIMEOUT = 5.0  # seconds; a node waits up to 2 s for a read index before a 503
MAX_HOPS = 5  # "not the leader, ask node N" answers followed per request


class Refused(Exception):
    """Exit 1: no node could (or would) do what was asked."""


class NodeError(Exception):
    """One node did not answer usefully; ``str()`` says why, briefly."""

    def __init__(self, message: str, status: int | None = None, doc: dict | None = None, sent: bool = False):
        super().__init__(message)
        self.status = status
        self.doc = doc or {}  # the error document, if the node sent one
        self.sent = sent  # the request may have reached the node (do not repeat a POST elsewhere)


STREAM_CHUNK = 256 * 1024  # bytes read at a time from a streamed answer


def _connect(address: Address, timeout: float, tls):
    if tls is None:
        return http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    return http.client.HTTPSConnection(address.host, address.port, timeout=timeout, context=tls)


def _failure(e: BaseException, timeout: float, tls, sent: bool) -> NodeError:
    """One line for a transport failure of a request to one node."""
    if isinstance(e, ConnectionRefusedError):
        return NodeError("connection refused")
    if isinstance(e, ssl.SSLError):
        return NodeError(f"TLS failed: {e.reason or e}", sent=sent)
    if isinstance(e, http.client.RemoteDisconnected):
        hint = "" if tls is not None else " (does it speak HTTPS? give --tls-ca)"
        return NodeError(f"closed the connection without answering{hint}", sent=sent)
    if isinstance(e, TimeoutError):
        return NodeError(f"no answer within {timeout:g} s", sent=sent)
    return NodeError(str(e) or type(e).__name__, sent=sent)


def _error_of(response, raw: bytes) -> NodeError:
    """The NodeError of a non-200 answer (its JSON error document, if any)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return NodeError(f"HTTP {response.status}, not JSON", response.status)
    doc = doc if isinstance(doc, dict) else {}
    error = doc.get("error")
    return NodeError(f"HTTP {response.status}: {error or 'no reason given'}", response.status, doc)


def fetch_stream(address: Address, path: str, timeout: float, sink, tls=None) -> dict[str, str]:
    """GET ``path`` from one node and hand its body to ``sink(bytes)`` as it arrives; the headers.

    Nothing reaches ``sink`` unless the answer is 200.  NodeError for a refusal
    (its JSON error document) or a stream that ends before its Content-Length
    (``status`` 200: bytes may have reached ``sink``).  ``timeout`` bounds each
    wait for bytes, not the whole transfer.
    """
    conn = _connect(address, timeout, tls)
    sent = False
    try:
        conn.request("GET", path, headers={"accept": "application/octet-stream, application/json"})
        sent = True
        response = conn.getresponse()
        if response.status != 200:
            raise _error_of(response, response.read())
        headers = {k.lower(): v for k, v in response.getheaders()}
        received = 0
        try:
            while chunk := response.read1(STREAM_CHUNK):
                received += len(chunk)
                sink(chunk)
        except http.client.IncompleteRead:
            pass
        except (OSError, http.client.HTTPException) as e:
            raise NodeError(f"the stream broke after {received} bytes: {_failure(e, timeout, tls, True)}", 200,
                            sent=True) from None  # fmt: skip
        expected = headers.get("content-length")
        if expected is not None and received != int(expected):
            raise NodeError(f"the stream ended after {received} of {expected} bytes", 200, sent=True)
        return headers
    except (OSError, http.client.HTTPException) as e:
        raise _failure(e, timeout, tls, sent) from None
    finally:
        conn.close()


def fetch(address: Address, path: str, timeout: float, body: dict | None = None, tls=None) -> dict:
    """GET ``path`` from one node (POST ``body`` if given); the JSON document, or NodeError.

    ``tls``: an ``ssl.SSLContext`` for HTTPS (the node's host name is checked), else plain HTTP.
    """
    conn = _connect(address, timeout, tls)
    sent = False
    try:
        if body is None:
            conn.request("GET", path, headers={"accept": "application/json"})
        else:
            data = json.dumps(body).encode()
            headers = {"accept": "application/json", "content-type": "application/json"}
            conn.request("POST", path, body=data, headers=headers)
        sent = True
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise _failure(e, timeout, tls, sent) from None
    finally:
        conn.close()
    if response.status != 200:
        raise _error_of(response, raw)
    try:
        return json.loads(raw)
    except ValueError:
        raise NodeError(f"HTTP {response.status}, not JSON", response.status) from None


class ClusterClient:
    """The nodes parkctl may ask, in the order given."""

    def __init__(self, addresses: tuple[Address, ...], timeout: float = DEFAULT_TIMEOUT, tls=None):
        self.addresses = addresses
        self.timeout = timeout
        self.tls = tls  # an ssl.SSLContext for HTTPS, or None

    def read(self, path: str) -> dict:
        """A linearizable read from the first node that can answer, following leader hints."""
        todo = list(self.addresses)
        tried: list[str] = []
        problems: list[str] = []
        while todo:
            address = todo.pop(0)
            if str(address) in tried:
                continue
            tried.append(str(address))
            try:
                return fetch(address, path, self.timeout, tls=self.tls)
            except NodeError as e:
                problems.append(f"{address}: {e}")
                if e.status is not None and e.status != 503:
                    raise Refused(f"{address} refused {path}: {e}") from None
                if e.status == 503:  # this node cannot reach a leader: try the one it names
                    leader = self._leader_address(address)
                    if leader is not None:
                        todo.insert(0, leader)
        raise Refused("no node could answer (" + "; ".join(problems) + ")")

    def change(self, path: str, body: dict, wait: float) -> dict:
        """POST an admin request to the leader: follow 421 hints, retry 503s until ``wait`` is over.

        A request that may have reached a node without an answer is not sent
        again elsewhere: the change may have been made.
        """

        def refuse(address: Address, e: NodeError) -> None:
            if e.status is not None and e.status not in (421, 503):
                raise Refused(e.doc.get("error") or str(e)) from None
            if e.sent:
                raise Refused(f"{address}: {e}; the change may have been made, see parkctl status") from None

        timeout = wait + min(wait, DEFAULT_TIMEOUT)
        return self._at_the_leader(lambda address: fetch(address, path, timeout, body, tls=self.tls), wait, refuse)

    def download(self, path: str, sink, wait: float) -> dict[str, str]:
        """Stream ``path`` from the leader into ``sink`` (:func:`fetch_stream`); its headers.

        Follows 421 hints and retries 503s until ``wait`` is over, as long as
        no byte has reached ``sink``; a stream that breaks is Refused.
        """

        def refuse(address: Address, e: NodeError) -> None:
            if e.status is not None and e.status not in (421, 503):
                raise Refused(f"{address}: " + (e.doc.get("error") or str(e))) from None

        return self._at_the_leader(
            lambda address: fetch_stream(address, path, self.timeout, sink, tls=self.tls), wait, refuse
        )

    def _at_the_leader(self, attempt, wait: float, refuse):
        """``attempt(address)`` on each node in turn, following 421 hints to the leader
        (at most ``MAX_HOPS``) and asking again every 0.5 s until ``wait`` is over (an
        election is under way); ``refuse(address, error)`` raises Refused for an error
        that ends the request."""
        deadline = time.monotonic() + wait
        problems: list[str] = []
        hops = 0
        while True:
            todo = list(self.addresses)
            while todo:
                address = todo.pop(0)
                try:
                    return attempt(address)
                except NodeError as e:
                    problems.append(f"{address}: {e}")
                    if e.status == 421 and e.doc.get("leader_http") and hops < MAX_HOPS:
                        hops += 1
                        todo.insert(0, _address(e.doc["leader_http"]))
                    else:
                        refuse(address, e)
            if time.monotonic() + 0.5 > deadline:
                raise Refused("no leader could take the request (" + "; ".join(problems[-len(self.addresses):]) + ")")
            time.sleep(0.5)  # an election is under way: ask again

    def _leader_address(self, address: Address) -> Address | None:
        try:
            view = fetch(address, "/api/v1/cluster", self.timeout, tls=self.tls)
        except NodeError:
            return None
        for member in view.get("members", []):
            if member["id"] == view.get("leader_id") and member.get("http"):
                return _address(member["http"])
        return None

    def views(self) -> dict[str, dict | NodeError]:
        """Every node's own view (``/api/v1/cluster``), including members not given."""
        views = self._fetch_all(self.addresses)
        known = {str(a) for a in self.addresses}
        more = []
        for view in views.values():
            if isinstance(view, dict):
                for member in view.get("members", []):
                    if member.get("http") and member["http"] not in known:
                        known.add(member["http"])
                        more.append(_address(member["http"]))
        views.update(self._fetch_all(more))
        return views

    def _fetch_all(self, addresses) -> dict[str, dict | NodeError]:
        def one(address):
            try:
                return fetch(address, "/api/v1/cluster", self.timeout, tls=self.tls)
            except NodeError as e:
                return e

        if not addresses:
            return {}
        with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
            return dict(zip((str(a) for a in addresses), pool.map(one, addresses)))


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address(host.strip("[]"), int(port))
