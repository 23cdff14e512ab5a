"""Transport guards of the storage node: every peer is bounded in time, memory and number.

pynetdicom reads a PDU by taking its declared length from the 6-byte header and then blocking
in `recv` until that many bytes came, buffering them all. An idle timeout alone (its
`network_timeout`) does not stop a peer that trickles one byte every few seconds, nor one that
declares a 4 GiB PDU. The node therefore swaps the socket wrapper of each accepted association
for `GuardedSocket`, which

- gives each PDU a deadline from its first byte (`pdu_deadline_s`), covering the
  association request as well, so negotiation cannot be stretched either;
- refuses a PDU whose declared length is over the cap before reading it (our maximum PDU size
  for P-DATA, a fixed bound for the association PDUs), and closes the connection;
- refuses an instance whose accumulated P-DATA passes `max_instance_bytes`, and any P-DATA
  once the instances in transfer over all associations (pynetdicom buffers each in memory
  until its handler returns) would pass `max_buffered_bytes`;
- bounds our sends by the network timeout (a peer that stops reading cannot hold us).

`GuardedServer` caps live connections in total and per peer address at accept time, runs
each association to its end in the connection's thread and drops one that makes no progress
(no completed DIMSE message, no megabytes received) for `stall_s`. Refusing or dropping a peer
closes its TCP connection; pynetdicom then sees a closed transport and aborts the association.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Callable

P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(1, 8))
ASSOCIATION_PDU_MAX = 1 << 20  # an A-ASSOCIATE-RQ with 128 contexts is well under 100 KiB
PROGRESS_BYTES = 16 << 20  # this much P-DATA counts as progress inside a large instance
_RECV_CHUNK = 65536


@dataclass(frozen=True)
class NodeLimits:
    """Time, size and count caps of one storage node (defaults admit any real modality)."""

    network_timeout_s: float = 60.0  # idle association (pynetdicom), and each send
    acse_timeout_s: float = 30.0  # waiting for the association request / release
    dimse_timeout_s: float = 60.0
    pdu_deadline_s: float = 10.0  # to receive one whole PDU once its first byte came (128 KiB)
    stall_s: float = 600.0  # an association with no progress for this long is dropped
    max_pdu_size: int = 131072  # what we announce; dcmtk peers send up to this
    max_instance_bytes: int = 2 << 30  # one C-STORE data set (tomosynthesis fits)
    max_buffered_bytes: int = 4 << 30  # instances in transfer, all associations together
    max_associations: int = 16
    max_per_peer: int = 8  # live connections from one address

    def pdu_cap(self, pdu_type: int) -> int:
        """The largest variable-field length accepted for a PDU of this type."""
        if pdu_type == P_DATA_TF:
            return self.max_pdu_size or ASSOCIATION_PDU_MAX
        return ASSOCIATION_PDU_MAX


def peer_key(client_address) -> str:
    """The peer's address as one string (an IPv4-mapped IPv6 address as plain IPv4)."""
    host = str(client_address[0])
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(addr, "ipv4_mapped", None)
    return str(mapped or addr)


class PeerRefused(OSError):
    """A PDU or instance over its cap, or a PDU too slow: the connection is closed."""


def _make_guarded_socket_class():
    from pynetdicom.transport import AssociationSocket

    class GuardedSocket(AssociationSocket):
        """An AssociationSocket whose reads have a deadline and a size cap (see module doc)."""

        def init_guard(self, limits: NodeLimits, on_drop: Callable[[str], None],
                       budget: "BufferBudget") -> None:
            self.limits = limits
            self._on_drop = on_drop
            self._budget = budget
            self._deadline: float | None = None  # set while a PDU is being read
            self._instance_bytes = 0  # P-DATA since the last complete DIMSE message
            self._held = 0  # bytes of received C-STOREs whose handler has not finished
            self._count_lock = threading.Lock()  # the DUL and association threads both count
            self._bytes_since_progress = 0
            self.last_progress = time.monotonic()
            self.dropped: str | None = None

        def mark_progress(self, is_store: bool) -> None:
            """A DIMSE message was completed: the instance size and stall clocks restart.
            A C-STORE's data stays buffered (and counted) until its handler is done."""
            with self._count_lock:
                done, self._instance_bytes = self._instance_bytes, 0
                if is_store:
                    self._held += done
            if not is_store:
                self._budget.release(done)
            self._bytes_since_progress = 0
            self.last_progress = time.monotonic()

        def store_handled(self) -> None:
            """The C-STORE handler returned: its data set's buffer is free."""
            with self._count_lock:
                held, self._held = self._held, 0
            self._budget.release(held)

        def release_all(self) -> None:
            """The association ended: nothing of it is buffered any more."""
            with self._count_lock:
                rest, self._held, self._instance_bytes = self._held + self._instance_bytes, 0, 0
            self._budget.release(rest)

        def drop(self, reason: str) -> None:
            """Close the TCP connection (both ways) and say why, once."""
            if self.dropped is None:
                self.dropped = reason
                self._on_drop(reason)
            sock = self.socket
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def recv(self, nr_bytes: int) -> bytearray:
            # pynetdicom's DUL reads a PDU as recv(6) (header) then recv(length) (the rest)
            if self._deadline is None:
                self._deadline = time.monotonic() + self.limits.pdu_deadline_s
                try:
                    header = self._read(nr_bytes)
                    if len(header) == 6 and header[0] in _PDU_TYPES:
                        self._check_header(header)
                        return header
                except BaseException:
                    self._deadline = None
                    raise
                self._deadline = None  # pynetdicom closes or aborts: no body follows
                return header
            try:
                return self._read(nr_bytes)
            finally:
                self._deadline = None

        def _check_header(self, header: bytes) -> None:
            pdu_type, _, length = struct.unpack(">BBL", header)
            cap = self.limits.pdu_cap(pdu_type)
            if length > cap:
                self._refuse(f"a PDU of {length} bytes (type 0x{pdu_type:02X}) is over the "
                             f"cap of {cap}")
            if pdu_type == P_DATA_TF:
                if not self._budget.reserve(length):
                    self._refuse(f"the node buffers {self._budget.cap} bytes of instances in "
                                 f"transfer at most, and is full")
                with self._count_lock:
                    self._instance_bytes += length
                    instance = self._instance_bytes
                self._bytes_since_progress += length
                if self._bytes_since_progress >= PROGRESS_BYTES:
                    self._bytes_since_progress = 0
                    self.last_progress = time.monotonic()
                if instance > self.limits.max_instance_bytes:
                    self._refuse(f"an instance of more than {self.limits.max_instance_bytes} "
                                 f"bytes is over the cap")

        def _refuse(self, reason: str) -> None:
            self._deadline = None
            self.drop(reason)
            raise PeerRefused(reason)

        def _read(self, nr_bytes: int) -> bytearray:
            """Up to `nr_bytes` before the PDU's deadline; fewer when the peer closed."""
            sock = self.socket
            buf = bytearray()
            try:
                while len(buf) < nr_bytes:
                    remaining = self._deadline - time.monotonic()
                    if remaining <= 0:
                        self._refuse(f"a PDU was not complete within "
                                     f"{self.limits.pdu_deadline_s:g} s")
                    sock.settimeout(remaining)
                    try:
                        chunk = sock.recv(min(_RECV_CHUNK, nr_bytes - len(buf)))
                    except TimeoutError:
                        continue  # the loop turns an expired deadline into a refusal
                    if not chunk:
                        break
                    buf += chunk
            finally:
                if self.socket is not None:
                    self.socket.settimeout(self.limits.network_timeout_s)  # bounds our sends
            return buf

    return GuardedSocket


def _make_handler_class():
    from pynetdicom.transport import RequestHandler

    class GuardedHandler(RequestHandler):
        """Guards the association's socket and runs the association to its end, dropping it
        when it stalls (the connection's thread is its watchdog)."""

        def _create_association(self):
            assoc = super()._create_association()
            sock = assoc.dul.socket
            # same object, our recv: pynetdicom has already queued the connection event for it
            sock.__class__ = self.server.socket_class
            key = peer_key(self.client_address)
            sock.init_guard(self.server.limits,
                            lambda reason: self.server.dropped(key, reason), self.server.budget)
            self.server.sockets.add(sock)
            return assoc

        def handle(self) -> None:
            from pynetdicom import evt

            assoc = self._create_association()
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            try:
                self._watch(assoc)
            finally:
                assoc.dul.socket.release_all()

        def _watch(self, assoc) -> None:
            """Until the association ends: drop it when it stalls; end the wait for an
            association request of a peer already dropped."""
            sock = assoc.dul.socket
            stall = self.server.limits.stall_s
            woken = False
            while assoc.is_alive():
                assoc.join(0.2)
                if not assoc.is_alive():
                    break
                if sock.dropped and not woken and not assoc.is_established and getattr(
                        assoc.requestor, "primitive", None) is None:
                    # pynetdicom would wait out the ACSE timeout, holding the peer's slot
                    assoc.dul.to_user_queue.put(None)
                    woken = True
                if time.monotonic() - sock.last_progress > stall:
                    sock.drop(f"no progress for {stall:g} s")
                    assoc.join(self.server.limits.pdu_deadline_s + 5)

    return GuardedHandler


class BufferBudget:
    """Bytes of instances being received, over all associations: pynetdicom holds each in
    memory until its handler returns, so their sum is capped."""

    def __init__(self, cap: int):
        self.cap = cap
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.cap:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


def mark_progress(event) -> None:
    """EVT_DIMSE_RECV handler: a whole DIMSE message came (restarts the stall clocks)."""
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dimse_messages import C_STORE_RQ

    sock = getattr(event.assoc.dul, "socket", None)
    if hasattr(sock, "mark_progress"):
        sock.mark_progress(isinstance(event.message, (C_STORE_RQ, C_STORE)))


def store_handled(assoc) -> None:
    """Call when a C-STORE handler is done: its data set's buffer no longer counts."""
    sock = getattr(assoc.dul, "socket", None)
    if hasattr(sock, "store_handled"):
        sock.store_handled()


def make_server_class(allow_peer: Callable[[str], bool], on_refused: Callable[[str, str], None],
                      on_dropped: Callable[[str, str], None]):
    """A ThreadedAssociationServer class with the guards; `allow_peer(address)` is the
    node's address allow-list, `on_refused(address, reason)` / `on_dropped(address, reason)`
    report a connection refused at accept time / dropped later."""
    from pynetdicom.transport import ThreadedAssociationServer

    socket_class = _make_guarded_socket_class()
    handler_class = _make_handler_class()

    class GuardedServer(ThreadedAssociationServer):
        """Refuses peers outside the allow-list and over the connection caps."""

        daemon_threads = True  # stopping never waits on a peer's thread
        limits = NodeLimits()

        def __init__(self, *args, limits: NodeLimits, **kw):
            self.limits = limits
            self.socket_class = socket_class
            self._peers: Counter = Counter()
            self._peers_lock = threading.Lock()
            self.sockets: weakref.WeakSet = weakref.WeakSet()  # of live associations
            self.budget = BufferBudget(limits.max_buffered_bytes)
            self.stopping = False
            super().__init__(*args, request_handler=handler_class, **kw)

        def drop_all(self) -> None:
            """Close every connection now (stopping: no read waits out its deadline)."""
            self.stopping = True
            for sock in list(self.sockets):
                sock.drop("the node is stopping")

        def live_connections(self, address: str | None = None) -> int:
            """Connections being served now, from `address` or in all."""
            with self._peers_lock:
                return self._peers[address] if address else sum(self._peers.values())

        def verify_request(self, request, client_address) -> bool:
            key = peer_key(client_address)
            if not allow_peer(key):
                on_refused(key, "address not allowed")
                return False
            lim = self.limits
            with self._peers_lock:
                total = sum(self._peers.values())
                if total >= lim.max_associations:
                    reason = f"{total} connections open, the most the node takes"
                elif self._peers[key] >= lim.max_per_peer:
                    reason = f"{self._peers[key]} connections open from this address, the most " \
                             f"one peer may hold"
                else:
                    self._peers[key] += 1
                    return True
            on_refused(key, reason)
            return False

        def process_request(self, request, client_address) -> None:
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._release(client_address)  # no thread: nobody else will
                raise

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._release(client_address)

        def _release(self, client_address) -> None:
            key = peer_key(client_address)
            with self._peers_lock:
                self._peers[key] -= 1
                if self._peers[key] <= 0:
                    del self._peers[key]

        def dropped(self, address: str, reason: str) -> None:
            if not self.stopping:
                on_dropped(address, reason)

    return GuardedServer
