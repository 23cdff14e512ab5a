"""The storage node: a C-STORE receiver that files mammograms into the library and scores them.

Each received instance is written atomically into the library's inbox (a temporary file in
`inbox/.incoming`, fsync, then `os.replace` to `inbox/<h(PatientID)>/<h(StudyUID)>/<h(SOP)>.dcm`,
where h is `safety.hashed_name`: no value a peer sends ever becomes a path component), so no
half-written file is ever visible. An instance whose SOP or Study Instance UID is not a valid
UID is refused with a failure status. Received files are indexed in batches by the core
import (`core.ingest.run_import`) on one indexer thread: when an association ends, when a
batch fills, or after a short window. Exams that have their four standard views are queued for
scoring on the node's own `InferenceService` (its model loads when the first exam needs it).
The indexer thread holds one cache connection for its lifetime; the duplicate check on an
association's thread opens a read-only one and closes it; all SQL is in `core.cache.reads`.

Every handler returns a DICOM status instead of raising: a bad instance gets a failure status
and the association goes on. Peers are bounded in time, memory and number (`guard`: PDU
deadlines and size caps, an instance size cap, connection caps per peer and in total), and the
node is open to any peer only when asked to (`allow_any`), with a warning. The indexer survives
any failure of one instance (native decoder panics included) and is restarted if it dies. At start the inbox is re-indexed, so nothing received before a
crash or power cut is lost. Events are plain frozen dataclasses passed to `on_event` (on a
worker thread; a GUI must hop to its own thread) and written to `<library>/logs/dicom-node.log`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from mamview.core import safety
from mamview.core.cache import db as cache_db
from mamview.core.cache import reads
from mamview.core.errors import InputRefused, LibraryError, MamviewError
# the node forwards its inference service's ExamScored as is (one event type for a score)
from mamview.core.domain import risk_percent
from mamview.core.services.inference import ExamScored
from mamview.core.net import guard
from mamview.core.net.guard import NodeLimits
from mamview.core.net.nodes import check_ae_title

log = logging.getLogger("mamview.net")

LOG_FILE_NAME = "dicom-node.log"
INCOMING = ".incoming"  # hidden: the import's folder walk never sees half-received files

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"


def standard_storage_classes() -> tuple[str, ...]:
    """Every standard storage SOP class (pynetdicom's list): a screening study also holds CAD
    SR, presentation states, key objects, secondary captures and tomosynthesis, and a PACS
    fails a whole C-MOVE when one of its objects has nowhere to go."""
    from pynetdicom import AllStoragePresentationContexts

    return tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)

# Stored as received. Where a peer offers several for one context, pynetdicom accepts the first
# of ours that it offers: lossless compressed first (no transcoding, smaller files), then
# uncompressed, lossy last (a sender able to compress must not be invited to lose detail).
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy when the file is)
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    # not JPEG Extended (.51): its 12-bit lossy images have no permissively licensed decoder
    # here (Pillow and the GDCM wheel refuse 12-bit precision), so the context is rejected at
    # association time and the peer transcodes or says why, instead of a Success followed by
    # "cannot decode"
)


# C-STORE statuses (PS3.4 B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_OUR_SOP_CLASS = 0xA900  # Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000

FLUSH_COUNT = 64  # index after this many new files…
FLUSH_WINDOW_S = 1.0  # …or this long after the first unindexed one, or when an association ends
WATCHDOG_S = 1.0  # how often the indexer thread is checked
MAX_INDEXER_DEATHS = 3  # in a row on one batch: that batch is left in the inbox for the next start
MAX_POISONED_PER_BATCH = 64  # previews retried after a decoder failure, at most
REPEAT_LOG_S = 10.0  # the same refusal of the same peer is logged at most this often

# what a decoder failure may be, native panics included; never these two
_FATAL = (KeyboardInterrupt, SystemExit)

OPEN_WARNING = ("the DICOM node accepts any calling AE title from any address: anyone who can "
                "reach this port can store images into the library")


class NodeOpenRefused(MamviewError):
    """A node was asked to start with no allow-list and without an explicit allow_any."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class NodeStarted:
    ae_title: str
    host: str
    port: int
    open: bool = False  # True: any peer may store (allow_any); a window shows a warning


@dataclass(frozen=True)
class NodeStopped:
    ae_title: str
    port: int


@dataclass(frozen=True)
class InstanceStored:
    sop_instance_uid: str
    patient_id: str
    study_instance_uid: str
    path: str
    calling_ae: str
    duplicate: bool  # True: already in the library, nothing written


@dataclass(frozen=True)
class InstanceFailed:
    sop_instance_uid: str
    calling_ae: str
    status: int
    reason: str


@dataclass(frozen=True)
class AssociationRefused:
    calling_ae: str
    address: str
    reason: str


@dataclass(frozen=True)
class BatchIndexed:
    files: int
    added: int
    skipped: int
    seconds: float


@dataclass(frozen=True)
class ExamComplete:
    exam_key: str
    patient_id: str
    exam_date: str


@dataclass(frozen=True)
class ExamNotScored:
    exam_key: str
    reason: str


@dataclass(frozen=True)
class NodeError:
    message: str


NodeEvent = (NodeStarted | NodeStopped | InstanceStored | InstanceFailed | AssociationRefused
             | BatchIndexed | ExamComplete | ExamScored | ExamNotScored | NodeError)


@dataclass
class NodeStats:
    """Counters since start (read them any time; updated under the node's lock)."""

    received: int = 0
    duplicates: int = 0
    failed: int = 0
    refused: int = 0
    indexed: int = 0
    exams_complete: int = 0
    exams_scored: int = 0


# ---------------------------------------------------------------- helpers


def _host_matcher(allowed: Iterable[str]) -> list:
    """Networks (an address is a /32 or /128) of the allowed peers; host names are resolved now."""
    nets = []
    for h in allowed:
        try:
            nets.append(ipaddress.ip_network(h, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(h, None)
        except OSError as exc:
            raise ValueError(f"allowed host {h!r} is not an address, network or known name: "
                             f"{exc}") from None
        nets.extend(ipaddress.ip_network(i[4][0]) for i in infos)
    return nets


def inbox_path(inbox: Path, patient_id: str, study_uid: str, sop_uid: str) -> Path:
    """Where a received instance is filed: names hashed from its identifiers, inside `inbox`
    (InputRefused if the result were not)."""
    dest = (inbox / safety.hashed_name(patient_id or "") / safety.hashed_name(study_uid)
            / safety.hashed_name(sop_uid, ".dcm"))
    safety.inside(inbox, dest)
    return dest


# ---------------------------------------------------------------- the node


class StorageNode:
    """A DICOM Storage SCP (and Verification SCP) that files mammograms into a library.

    `allowed_aes` / `allowed_hosts`: only these calling AE titles / peer addresses (IPs,
    networks such as 10.0.0.0/24, or host names) may associate. Without either, `allow_any`
    must be True (the node is then open, `is_open`, and says so in its log); otherwise
    `NodeOpenRefused`. `limits`: time, size and count caps (`guard.NodeLimits`). `score`:
    queue complete exams for scoring with `model` on `device`. `on_event(event)` receives
    `NodeEvent`s on worker threads.
    """

    def __init__(self, lib, ae_title: str = "MAMVIEW", port: int = 11112, host: str = "0.0.0.0",
                 allowed_aes: Iterable[str] | None = None,
                 allowed_hosts: Iterable[str] | None = None, score: bool = True,
                 model: str = "auto", device: str = "auto",
                 on_event: Callable[[object], None] | None = None, make_previews: bool = True,
                 allow_any: bool = False, limits: NodeLimits | None = None,
                 sop_classes: Iterable[str] | None = None):
        self.lib = lib
        self.ae_title = check_ae_title(ae_title)
        self.port = int(port)
        self.host = host
        self.allowed_aes = [check_ae_title(a) for a in allowed_aes or []]
        self._allowed_nets = _host_matcher(allowed_hosts or [])
        if not (self.allowed_aes or self._allowed_nets or allow_any):
            raise NodeOpenRefused(
                "the DICOM node needs to know whom to accept: name the calling AE titles or "
                "peer addresses allowed to send (an allow-list), or choose explicitly to "
                "accept any peer")
        self.limits = limits or NodeLimits()
        # what the node stores: every standard storage class unless the site narrows it
        self.sop_classes = tuple(sop_classes) if sop_classes else standard_storage_classes()
        self.score = score
        self.model = model
        self.device = device
        self.make_previews = make_previews
        self._on_event = on_event
        self.stats = NodeStats()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._pending: list[str] = []  # received, not yet indexed
        self._inflight: list[str] = []  # the batch the indexer works on
        self._first_pending_at = 0.0
        self._flush_now = False
        self._indexing = False
        self._reindexed = False
        self._stopping = False
        self._received_uids: set[str] = set()
        self._server = None
        self._ae = None
        self._indexer: threading.Thread | None = None
        self._indexer_deaths = 0
        self._watchdog: threading.Thread | None = None
        self._service = None
        self._model_entry = None
        self._service_broken = False
        self._log_handler: logging.Handler | None = None
        self._turned_away: dict[tuple, tuple[float, int]] = {}

    # -- public API

    @property
    def bound_port(self) -> int | None:
        """The TCP port the node listens on (useful with port=0), None when stopped."""
        return self._server.server_address[1] if self._server else None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def is_open(self) -> bool:
        """True when any calling AE title from any address may store (no allow-list)."""
        return not (self.allowed_aes or self._allowed_nets)

    def allow(self, ae_title: str, host: str) -> None:
        """Also accept this peer (a PACS we ask to send us studies): its AE title joins the
        AE allow-list, its host the address allow-list where there is one."""
        if self.is_open:
            return
        title = check_ae_title(ae_title)
        if self.allowed_aes and title not in self.allowed_aes:
            self.allowed_aes.append(title)
            if self._ae is not None:
                self._ae.require_calling_aet = list(self.allowed_aes)
        if self._allowed_nets:
            self._allowed_nets = self._allowed_nets + _host_matcher([host])

    @property
    def indexer_alive(self) -> bool:
        """True while the indexer thread runs (it is restarted when it dies)."""
        return self._indexer is not None and self._indexer.is_alive()

    def start(self) -> "StorageNode":
        """Open the port and start the indexer (which first re-indexes the inbox).

        Raises OSError when the port cannot be opened (in use, no permission)."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        if self._server is not None:
            return self
        self.lib.ensure()
        self._incoming.mkdir(parents=True, exist_ok=True)
        self._clear_incoming()
        self._open_log()
        with cache_db.opened(self.lib.database):
            pass  # create / migrate before any reader opens it

        lim = self.limits
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = lim.max_pdu_size
        ae.network_timeout = lim.network_timeout_s
        ae.acse_timeout = lim.acse_timeout_s
        ae.dimse_timeout = lim.dimse_timeout_s
        ae.maximum_associations = lim.max_associations
        if self.allowed_aes:
            ae.require_calling_aet = self.allowed_aes
        ae.add_supported_context(Verification)
        for uid in self.sop_classes:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_DIMSE_RECV, guard.mark_progress),
            (evt.EVT_RELEASED, self._association_ended),
            (evt.EVT_ABORTED, self._association_ended),
            (evt.EVT_REJECTED, self._association_rejected),
        ]
        server_class = guard.make_server_class(self._peer_allowed, self._connection_refused,
                                               self._connection_dropped)
        server = ae.make_server((self.host, self.port), ae_title=self.ae_title,
                                evt_handlers=handlers, server_class=server_class, limits=lim)
        self.port = server.server_address[1]  # the real port when 0 (any free one) was asked
        threading.Thread(target=server.serve_forever, name=f"mamview-scp-{self.port}",
                         daemon=True).start()
        ae._servers.append(server)  # so ae.shutdown() stops it, as start_server would
        self._ae, self._server = ae, server
        self._stopping = False
        self._start_indexer()
        self._watchdog = threading.Thread(target=self._watch_indexer, name="mamview-scp-watchdog",
                                          daemon=True)
        self._watchdog.start()
        self._emit(NodeStarted(self.ae_title, self.host, self.bound_port, self.is_open),
                   f"listening as {self.ae_title} on {self.host}:{self.bound_port}"
                   + (f", calling AEs {', '.join(self.allowed_aes)}" if self.allowed_aes else "")
                   + (f", peers {', '.join(map(str, self._allowed_nets))}"
                      if self._allowed_nets else ""))
        if self.is_open:  # NodeStarted.open tells listeners; the log says it in words
            log.warning("[%s:%s] warning: %s", self.ae_title, self.port, OPEN_WARNING)
        return self

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until everything received is indexed and queued exams are scored.

        Returns False if that did not happen within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._flush_now = True
            self._cv.notify_all()
        while time.monotonic() < deadline:
            with self._cv:
                files_done = (self._reindexed and not self._pending and not self._indexing
                              and self.indexer_alive)
                if self._pending:
                    self._flush_now = True
                    self._cv.notify_all()
            svc = self._service
            if files_done and (svc is None or self._service_broken or svc.idle()):
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 30.0) -> None:
        """Close the port, index what was received, stop scoring (queued exams are dropped;
        they are picked up again at the next start)."""
        if self._server is None:
            return
        port = self.bound_port
        try:
            self._server.drop_all()  # no peer's read or send holds the shutdown up
            self._ae.shutdown()  # closes the port and the open associations
        except Exception as exc:  # noqa: BLE001 - stopping must not fail halfway
            log.warning("while closing the port: %s", exc)
        self._server = None
        with self._cv:
            self._stopping = True
            self._flush_now = True
            self._cv.notify_all()
        if self._watchdog is not None:
            self._watchdog.join(timeout)
        if self._indexer is not None:
            self._indexer.join(timeout)
        if self._service is not None:
            self._service.shutdown(timeout)
            self._service = None
        self._emit(NodeStopped(self.ae_title, port or 0), "stopped")
        self._close_log()

    def __enter__(self) -> "StorageNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- events and log

    def _emit(self, event, message: str, level: int = logging.INFO) -> None:
        log.log(level, "[%s:%s] %s", self.ae_title, self.port, safety.printable(message))
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - a broken listener must not break the node
                log.exception("event listener failed")

    def _open_log(self) -> None:
        path = self.lib.logs / LOG_FILE_NAME
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # private
        try:
            os.chmod(path, 0o600)  # also a log made before logs were private
        except OSError:
            pass
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.addFilter(lambda rec: f"[{self.ae_title}:{self.port}]" in rec.getMessage())
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        self._log_handler = handler

    def _close_log(self) -> None:
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    # -- association guards (the server's threads)

    def _peer_allowed(self, address: str) -> bool:
        if not self._allowed_nets:
            return True
        try:
            addr = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(addr.version == n.version and addr in n for n in self._allowed_nets)

    def _connection_refused(self, address: str, reason: str) -> None:
        self._peer_turned_away(address, reason, "refused a connection from")

    def _connection_dropped(self, address: str, reason: str) -> None:
        self._peer_turned_away(address, reason, "dropped the connection from")

    def _peer_turned_away(self, address: str, reason: str, verb: str) -> None:
        """Count it; tell it, at most once per peer, verb and reason every REPEAT_LOG_S (a
        flood of connections must not flood the log)."""
        now = time.monotonic()
        key = (address, verb, reason.split(" ", 1)[-1])
        with self._lock:
            self.stats.refused += 1
            last, hidden = self._turned_away.get(key, (0.0, 0))
            if now - last < REPEAT_LOG_S:
                self._turned_away[key] = (last, hidden + 1)
                return
            if len(self._turned_away) >= 1024:
                self._turned_away.clear()
            self._turned_away[key] = (now, 0)
        more = f" ({hidden} more like it not shown)" if hidden else ""
        self._emit(AssociationRefused("", address, reason),
                   f"{verb} {address}: {reason}{more}", logging.WARNING)

    def _association_rejected(self, event) -> None:
        calling = event.assoc.requestor.ae_title
        allowed = not self.allowed_aes or calling in self.allowed_aes
        reason = "too many associations" if allowed else "calling AE title not allowed"
        with self._lock:
            self.stats.refused += 1
        self._emit(AssociationRefused(calling, str(event.assoc.requestor.address), reason),
                   f"rejected an association from {calling!r} at "
                   f"{event.assoc.requestor.address}: {reason}", logging.WARNING)

    def _association_ended(self, event) -> None:
        with self._cv:
            if self._pending:
                self._flush_now = True
                self._cv.notify_all()

    # -- receiving (association threads)

    @property
    def _incoming(self) -> Path:
        return self.lib.inbox / INCOMING

    def _clear_incoming(self) -> None:
        """Temporary files of transfers that were cut off: never completed, so never stored."""
        for p in self._incoming.glob("*.part"):
            try:
                p.unlink()
            except OSError:
                pass

    def _already_have(self, sop_uid: str) -> bool:
        if sop_uid in self._received_uids:
            return True
        # a short-lived connection: association threads come and go, none may leak one
        with cache_db.reading(self.lib.database) as db:
            return reads.has_present_image(db, sop_uid)

    def _handle_store(self, event) -> int:
        """C-STORE: write atomically, check, file; a DICOM status, never an exception."""
        from mamview.core.dicom import headers
        from mamview.core.domain import Problem

        calling = safety.printable(event.assoc.requestor.ae_title)
        uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        tmp = None
        try:
            if safety.is_valid_uid(uid) and self._already_have(uid):
                with self._lock:
                    self.stats.duplicates += 1
                self._emit(InstanceStored(uid, "", "", "", calling, True),
                           f"{uid} from {calling}: already in the library", logging.DEBUG)
                return SUCCESS
            tmp = self._incoming / f"{uuid.uuid4().hex}.part"
            _write_received(event, tmp)
            hdr = headers.read_header(tmp)
            if isinstance(hdr, Problem):
                status = CANNOT_UNDERSTAND if hdr.reason in (
                    "truncated", "unreadable header", "corrupt pixel data", "not DICOM",
                    "empty file", "no pixel data") else NOT_OUR_SOP_CLASS
                return self._failed(uid, calling, status, f"{hdr.reason}: {hdr.detail}")
            uid = hdr.sop_instance_uid or uid
            for what, value in (("SOP Instance UID", uid),
                                ("Study Instance UID", hdr.study_instance_uid)):
                if not safety.is_valid_uid(value):
                    return self._failed(uid, calling, NOT_OUR_SOP_CLASS,
                                        f"invalid {what} {value!r}")
            dest = inbox_path(self.lib.inbox, hdr.patient_id, hdr.study_instance_uid, uid)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                duplicate = uid in self._received_uids or dest.exists()
                if not duplicate:
                    os.replace(tmp, dest)
                    self._received_uids.add(uid)
                    self.stats.received += 1
                else:
                    self.stats.duplicates += 1
            if duplicate:
                self._emit(InstanceStored(uid, hdr.patient_id, hdr.study_instance_uid, str(dest),
                                          calling, True),
                           f"{uid} from {calling}: already received", logging.DEBUG)
                return SUCCESS
            tmp = None
            _fsync_dir(dest.parent)
            self._emit(InstanceStored(uid, hdr.patient_id, hdr.study_instance_uid, str(dest),
                                      calling, False),
                       f"stored {uid} ({hdr.patient_id}, study {hdr.study_instance_uid}) "
                       f"from {calling}", logging.DEBUG)
            self._enqueue(str(dest))
            return SUCCESS
        except InputRefused as exc:
            return self._failed(uid, calling, NOT_OUR_SOP_CLASS, str(exc))
        except (cache_db.DatabaseError, LibraryError) as exc:  # busy or unusable: retry later
            return self._failed(uid, calling, OUT_OF_RESOURCES, f"the library's index: {exc}")
        except OSError as exc:
            return self._failed(uid, calling, OUT_OF_RESOURCES, f"could not write: {exc}")
        except _FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - one bad instance never stops the node
            return self._failed(uid, calling, CANNOT_UNDERSTAND, f"{type(exc).__name__}: {exc}")
        finally:
            guard.store_handled(event.assoc)
            if tmp is not None:
                try:
                    tmp.unlink()
                except OSError:
                    pass

    def _failed(self, uid: str, calling: str, status: int, reason: str) -> int:
        with self._lock:
            self.stats.failed += 1
        self._emit(InstanceFailed(uid, calling, status, reason),
                   f"refused {uid or '(no SOP UID)'} from {calling} with status "
                   f"0x{status:04X}: {reason}", logging.WARNING)
        return status

    def _enqueue(self, path: str) -> None:
        with self._cv:
            if not self._pending:
                self._first_pending_at = time.monotonic()
            self._pending.append(path)
            if len(self._pending) >= FLUSH_COUNT:
                self._cv.notify_all()

    # -- indexing (indexer thread, watched)

    def _start_indexer(self) -> None:
        self._indexer = threading.Thread(target=self._index_loop, name="mamview-scp-indexer",
                                         daemon=True)
        self._indexer.start()

    def _watch_indexer(self) -> None:
        """Restart the indexer if it died (it should not: it catches everything it can).
        `stop` joins this thread before the indexer, so a late restart is joined too."""
        while True:
            with self._cv:
                if self._stopping:
                    return
                self._cv.wait(WATCHDOG_S)
                if self._stopping:
                    return
                dead = not self.indexer_alive
            if dead:
                self._restart_indexer()

    def _restart_indexer(self) -> None:
        skip_reindex = False
        with self._cv:
            batch, self._inflight = self._inflight, []
            self._indexing = False
            self._indexer_deaths += 1
            dropped = self._indexer_deaths > MAX_INDEXER_DEATHS
            if batch and not dropped:
                self._pending[:0] = batch  # tried again first
                self._flush_now = True
            if dropped:
                self._indexer_deaths = 0
                skip_reindex = not self._reindexed
                self._reindexed = True  # a re-index that keeps killing it is not tried again
        what = (f"; {len(batch)} files stay in the inbox until the next start" if batch and dropped
                else "; the inbox re-index is skipped until the next start"
                if dropped and skip_reindex
                else f"; its {len(batch)} files are indexed again" if batch else "")
        self._emit(NodeError(f"the indexer thread had stopped; restarted{what}"),
                   f"the indexer thread had stopped; restarted{what}", logging.ERROR)
        self._start_indexer()

    def _index_loop(self) -> None:
        # the thread's one connection, closed when the thread ends (stop, or a death)
        with cache_db.opened(self.lib.database, migrate=False) as db:
            if not self._reindexed:
                self._guarded("re-indexing the inbox", self._reindex_inbox, db)
                with self._cv:
                    self._reindexed = True
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._guarded(f"indexing {len(batch)} received files", self._index_batch,
                              db, batch)
                # not in a finally: if the thread dies, the watchdog finds the batch in flight
                with self._cv:
                    self._inflight = []
                    self._indexing = False
                    self._indexer_deaths = 0

    def _next_batch(self) -> list[str] | None:
        """Wait for a batch to index (count, window, flush or stop); None when stopping."""
        with self._cv:
            while True:
                if self._pending and (self._flush_now or self._stopping
                                      or len(self._pending) >= FLUSH_COUNT):
                    break
                if self._stopping:
                    return None
                if self._pending:
                    wait = self._first_pending_at + FLUSH_WINDOW_S - time.monotonic()
                    if wait <= 0:
                        break
                    self._cv.wait(wait)
                else:
                    self._flush_now = False
                    self._cv.wait(0.5)
            batch, self._pending = self._pending, []
            self._inflight = batch
            self._flush_now = False
            self._indexing = True
            return batch

    def _guarded(self, what: str, fn, db, *args) -> bool:
        """Run `fn(db, *args)`; any failure (a decoder panic included) is logged, the node
        goes on. Returns False on failure."""
        try:
            fn(db, *args)
            return True
        except _FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - the files stay in the inbox
            cache_db.rollback_open(db)
            msg = f"{what} failed: {type(exc).__name__}: {exc}"
            self._emit(NodeError(msg), msg, logging.ERROR)
            return False

    def _run_import(self, db, paths: list, make_previews: bool | None = None) -> object:
        from mamview.core.ingest import run_import

        previews = self.make_previews if make_previews is None else make_previews
        gen = run_import(self.lib, paths, make_previews=previews, db=db)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def _import(self, db, paths: list):
        """Import `paths`; if a file makes that fail (a decoder panic), index the headers,
        then make the previews skipping each image whose decoder fails."""
        try:
            return self._run_import(db, paths)
        except _FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001
            cache_db.rollback_open(db)
            msg = (f"importing {len(paths)} files failed ({type(exc).__name__}: {exc}); "
                   f"going on file by file")
            self._emit(NodeError(msg), msg, logging.ERROR)
        summary = self._run_import(db, paths, make_previews=False)
        if self.make_previews:
            self._previews_skipping_poison(db)
        return summary

    def _previews_skipping_poison(self, db) -> None:
        """Make the missing previews; an image whose decoder fails in a way the import did
        not catch is recorded as a decode error (so no later batch trips on it), bounded."""
        from mamview.core import ingest
        from mamview.core.cache import writes

        for _ in range(MAX_POISONED_PER_BATCH):
            todo = reads.images_needing_previews(db, ingest.PREVIEW_PIPELINE_VERSION)
            done = 0
            try:
                for ev in ingest.generate_previews(self.lib, db):
                    if isinstance(ev, ingest.ProblemFound) or (
                            isinstance(ev, ingest.Progress) and ev.phase == "previews"):
                        done += 1
                return
            except _FATAL:
                raise
            except BaseException as exc:  # noqa: BLE001 - a native decoder panic
                cache_db.rollback_open(db)
                if done >= len(todo):
                    raise
                row = todo[done]
                message = f"the decoder failed: {type(exc).__name__}: {exc}"
                writes.record_decode_error(db, row["sop_instance_uid"], row["path"], message)
                self._emit(NodeError(f"{row['path']}: {message}"),
                           f"no preview for {row['sop_instance_uid']}: {message}",
                           logging.WARNING)

    def _reindex_inbox(self, db) -> None:
        """Index whatever lies in the inbox (received before a restart) and queue its exams."""
        t0 = time.perf_counter()
        summary = self._import(db, [self.lib.inbox])
        inbox = str(self.lib.inbox.resolve())
        keys = reads.exam_keys_under(db, inbox)
        self._received_uids.update(reads.sop_uids_under(db, inbox))
        self._emit(BatchIndexed(summary.files_seen, summary.added + summary.updated,
                                sum(summary.skipped.values()), time.perf_counter() - t0),
                   f"inbox re-indexed: {summary.files_seen} files, {summary.added} new, "
                   f"{summary.updated} re-read, {len(keys)} exams")
        self._queue_complete_exams(db, keys, announce=summary.added + summary.updated > 0)

    def _index_batch(self, db, batch: list[str]) -> None:
        t0 = time.perf_counter()
        summary = self._import(db, batch)
        added = summary.added + summary.updated
        with self._lock:
            self.stats.indexed += added
        self._emit(BatchIndexed(len(batch), added, sum(summary.skipped.values()),
                                time.perf_counter() - t0),
                   f"indexed {len(batch)} received files ({added} new images) in "
                   f"{time.perf_counter() - t0:.2f} s")
        self._queue_complete_exams(db, reads.exam_keys_of_paths(db, batch))

    def _queue_complete_exams(self, db, exam_keys: list[str], announce: bool = True) -> None:
        complete = []
        for ek in exam_keys:
            ok, _ = reads.exam_status(reads.exam_images(db, ek))
            if not ok:
                continue
            complete.append(ek)
            if announce:
                date, patient_id = reads.exam_date_and_patient_id(db, ek) or ("", "")
                with self._lock:
                    self.stats.exams_complete += 1
                self._emit(ExamComplete(ek, patient_id, date),
                           f"exam complete: {ek}")
        if complete and self.score and not self._stopping:
            svc = self._inference()
            if svc is not None:
                svc.submit(complete)

    # -- scoring

    def _inference(self):
        """The node's inference service, created when the first exam needs it."""
        if self._service is not None or self._service_broken:
            return None if self._service_broken else self._service
        from mamview.core.services.inference import InferenceService
        from mamview.core.models import registry
        from mamview.core.models.errors import ModelUnavailable

        try:
            entry = registry.resolve(self.lib, self.model)
        except ModelUnavailable as exc:
            self.score = False
            self._emit(NodeError(f"exams will not be scored: {exc}"),
                       f"exams will not be scored: {exc}", logging.ERROR)
            return None
        self._model_entry = entry
        self._service = InferenceService(self.lib.database,
                                         lambda dev: registry.load(entry, dev),
                                         device=self.device, on_event=self._on_score_event)
        return self._service

    def _on_score_event(self, ev) -> None:
        from mamview.core.services import inference as inf

        if isinstance(ev, inf.ExamScored):
            with self._lock:
                self.stats.exams_scored += 1
            risk5 = risk_percent(ev.risk[-1:])[0] if ev.risk else float("nan")
            self._emit(ev,
                       f"exam scored: {ev.exam_key}: 5-year risk {risk5:.2f}% "
                       f"(model {ev.model_id}" + (f", {ev.model_label}" if ev.model_label else "")
                       + (", from cache" if ev.cached else "") + ")")
        elif isinstance(ev, inf.ExamUnscorable):
            self._emit(ExamNotScored(ev.exam_key, ev.reason),
                       f"exam not scored: {ev.exam_key}: {ev.reason}")
        elif isinstance(ev, inf.ScoreFailed):
            self._emit(ExamNotScored(ev.exam_key, ev.message),
                       f"scoring failed: {ev.exam_key}: {ev.message}", logging.ERROR)
        elif isinstance(ev, inf.ServiceError):
            self._service_broken = True  # the worker has stopped; queued exams stay unscored
            self._emit(NodeError(ev.message), ev.message, logging.ERROR)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_received(event, path: Path) -> None:
    """The received data set as a DICOM file, private to the user, durable; written from
    pynetdicom's buffer without copying it (an instance may be gigabytes)."""
    from pynetdicom.dsutils import encode_file_meta

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        f.write(encode_file_meta(event.file_meta))
        f.write(event.request.DataSet.getbuffer())
        f.flush()
        os.fsync(f.fileno())
