"""A TCP proxy per directed link between two nodes, which a test can cut.

Node ``i`` dials node ``j``'s raft port through the proxy ``(i, j)`` only, so
cutting that proxy drops exactly the messages ``i`` sends to ``j`` (Raft
messages are one-way: ``j`` answers on its own connection, through ``(j, i)``).
Cutting both directions partitions the pair; cutting one gives a one-way
partition.  Plain threads and sockets, independent of the daemons' reactor.
"""

from __future__ import annotations

import socket
import threading


class LinkProxy:
    """Forward connections from ``listen`` to ``target`` while the link is up."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.listen = listen
        self.target = target
        self.up = True
        self.dropped = 0  # connections closed by a cut or refused while cut: the cut took effect
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._server = socket.create_server(listen, reuse_port=False)
        self._server.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"proxy{listen[1]}")
        self._thread.start()

    def cut(self) -> None:
        """Drop the link: close open connections and refuse new ones."""
        with self._lock:
            self.up = False
            doomed, self._sockets = self._sockets, set()
            self.dropped += len(doomed)
        for s in doomed:
            _close(s)

    def heal(self) -> None:
        with self._lock:
            self.up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._server)
        self._thread.join(2)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if not self.up:
                _close(client)
                self.dropped += 1
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=1.0)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if not self.up:
                    _close(client)
                    _close(upstream)
                    continue
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class Network:
    """One proxy per ordered pair of nodes; partitions are sets of cut links."""

    def __init__(self, real_raft: dict[int, tuple[str, int]], ports: dict[tuple[int, int], int], host="127.0.0.1"):
        self.proxies = {
            (i, j): LinkProxy((host, ports[i, j]), real_raft[j]) for i in real_raft for j in real_raft if i != j
        }

    def address(self, src: int, dst: int) -> tuple[str, int]:
        return self.proxies[src, dst].listen

    def cut(self, src: int, dst: int) -> None:
        self.proxies[src, dst].cut()

    def partition(self, *groups: set[int]) -> None:
        """Cut every link between different groups (both directions)."""
        for (i, j), proxy in self.proxies.items():
            if not any(i in g and j in g for g in groups):
                proxy.cut()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def dropped(self) -> int:
        """Connections the cuts closed or refused so far (evidence that they took effect)."""
        return sum(proxy.dropped for proxy in self.proxies.values())

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
