"""The window's DICOM node and "Fetch priors": a thin Qt controller over core.net.

The node (core.net.StorageNode) runs on its own threads; its events come back through the
bridge. It does not score: the window's own inference service scores what it indexes, so the
worklist and chart update exactly as after a File → Import.

Whom the node accepts comes from the settings: `node_allowed_aes` / `node_allowed_hosts`, plus
the PACS nodes of the settings (their AE titles; their hosts where addresses are restricted).
With none of them it starts only when `node_allow_any` is set, and is then open: `is_open` is
True and `openChanged(True, warning)` is emitted so the window can show a lasting warning.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QObject, QTimer, Signal

from mamview.core.paths import Library


class DicomNodeController(QObject):
    """Starts/stops the storage node and runs fetch-priors requests off the GUI thread."""

    status = Signal(str)  # one line for the status bar
    libraryChanged = Signal()  # received images were indexed (throttled)
    fetchDone = Signal(object, object)  # FetchSummary or None, error message or None
    openChanged = Signal(bool, str)  # the node accepts any peer (True) and the warning to show

    def __init__(self, lib: Library, bridge, parent: QObject | None = None):
        super().__init__(parent)
        self.lib = lib
        self.bridge = bridge
        self.node = None
        self.received = 0
        self._fetch_cancel: threading.Event | None = None
        bridge.nodeEvent.connect(self._on_event)
        bridge.taskProgress.connect(self.status.emit)
        # many small batches arrive during a C-MOVE: refresh the worklist at most once a second
        self._changed_timer = QTimer(self)
        self._changed_timer.setSingleShot(True)
        self._changed_timer.setInterval(1000)
        self._changed_timer.timeout.connect(self.libraryChanged.emit)

    @property
    def running(self) -> bool:
        return self.node is not None

    @property
    def is_open(self) -> bool:
        """True while the node runs open to any peer (`node_allow_any`, no allow-list)."""
        return self.node is not None and self.node.is_open

    def start(self, ae_title: str, port: int, settings=None) -> str | None:
        """Open the node (whom it accepts: from `settings`, read from the library when not
        given); returns a message for the user when it cannot (no allow-list and no explicit
        allow-any, port in use, bad AE title)."""
        from mamview.core import settings as settings_mod
        from mamview.core.errors import MamviewError
        from mamview.core.net import NetError, StorageNode

        if self.node is not None:
            return None
        st = settings if settings is not None else settings_mod.load(self.lib.settings_file)
        aes, hosts = allow_lists(st)
        try:
            node = StorageNode(self.lib, ae_title=ae_title, port=port, score=False,
                               on_event=self.bridge.post_node_event, allowed_aes=aes,
                               allowed_hosts=hosts, allow_any=bool(st.node_allow_any))
            node.start()
        except (OSError, ValueError, NetError, MamviewError) as exc:
            msg = f"The DICOM node could not start on port {port}: {exc}"
            self.status.emit(msg)
            return msg
        self.node = node
        self.status.emit(f"DICOM node {node.ae_title} listening on port {node.bound_port}"
                         + (" — open to any peer" if node.is_open else ""))
        self.openChanged.emit(node.is_open, open_warning() if node.is_open else "")
        return None

    def stop(self) -> None:
        """Close the port; what was received stays in the library's inbox and index."""
        node, self.node = self.node, None
        if node is not None:
            was_open = node.is_open
            node.stop()
            self.status.emit("DICOM node stopped")
            if was_open:
                self.openChanged.emit(False, "")

    def fetch_priors(self, patient_id: str, pacs_text: str, settings,
                     all_studies: bool = False) -> str | None:
        """C-FIND + C-MOVE her earlier MG studies from `pacs_text` (address or settings name)
        to our running node, in the background; `fetchDone` reports. Returns an error message
        when the request cannot even start."""
        from mamview.core.net import NetError, fetch_priors, resolve_node

        if self.node is None:
            return "Start the DICOM node first (DICOM → Receive images): the PACS sends the " \
                   "priors to it."
        try:
            pacs = resolve_node(pacs_text, settings)
        except (NetError, ValueError) as exc:
            return str(exc)
        our_ae = self.node.ae_title
        try:
            self.node.allow(pacs.ae_title, pacs.host)  # the PACS we ask must be let in
        except ValueError as exc:
            return str(exc)
        if self.fetching:
            return "A fetch is already running (DICOM → Cancel fetch stops it)."
        self.status.emit(f"Fetching priors of {patient_id} from {pacs} …")
        cancel = self._fetch_cancel = threading.Event()

        def progress(done: int, total: int, study) -> None:  # on the worker thread
            where = f"Fetching priors of {patient_id} from {pacs}"
            if not total:
                text = f"{where}: asking for her studies …"
            elif done >= total:
                text = f"{where}: {total} studies moved, indexing …"
            else:
                when = getattr(study, "study_date", "") or "undated"
                text = f"{where}: study {done + 1} of {total} ({when}) …"
            self.bridge.post_task_progress(text + " (DICOM → Cancel fetch stops it)")

        def done(summary, error):
            self._fetch_cancel = None
            if error is not None and not isinstance(error, NetError):
                error = f"{type(error).__name__}: {error}"
            self.fetchDone.emit(summary, None if error is None else str(error))

        self.bridge.run_task(lambda: fetch_priors(self.lib, patient_id, pacs, our_ae,
                                                  progress=progress, all_studies=all_studies,
                                                  cancel=cancel), done)
        return None

    @property
    def fetching(self) -> bool:
        return self._fetch_cancel is not None

    def cancel_fetch(self) -> bool:
        """Stop the running fetch (the PACS is sent a C-CANCEL); False when none runs."""
        if self._fetch_cancel is None:
            return False
        self._fetch_cancel.set()
        self.status.emit("Cancelling the fetch …")
        return True

    def _on_event(self, ev) -> None:
        from mamview.core.net import scp

        if isinstance(ev, scp.InstanceStored) and not ev.duplicate:
            self.received += 1
        elif isinstance(ev, scp.BatchIndexed) and ev.added:
            self.status.emit(f"DICOM node: {self.received} images received")
            if not self._changed_timer.isActive():
                self._changed_timer.start()
        elif isinstance(ev, scp.InstanceFailed):
            self.status.emit(f"DICOM node: an instance was refused ({ev.reason})")
        elif isinstance(ev, scp.AssociationRefused):
            self.status.emit(f"DICOM node refused {ev.calling_ae} from {ev.address}: {ev.reason}")
        elif isinstance(ev, scp.NodeError):
            self.status.emit(f"DICOM node: {ev.message}")


def allow_lists(settings) -> tuple[list[str], list[str]]:
    """Calling AE titles and peer addresses the window's node accepts, from the settings.

    The PACS nodes of the settings are added: their AE titles always, their hosts only where
    the user restricts addresses (the node requires both lists to match)."""
    from mamview.core.net import nodes_from_settings

    pacs, _errors = nodes_from_settings(settings)
    aes = list(settings.node_allowed_aes or [])
    hosts = list(settings.node_allowed_hosts or [])
    if not aes and not hosts:
        if settings.node_allow_any:
            return [], []  # open, as chosen
        return list(dict.fromkeys(n.ae_title for n in pacs)), []  # only the known PACS
    if aes:
        aes += [n.ae_title for n in pacs if n.ae_title not in aes]
    if hosts:
        hosts += [n.host for n in pacs if n.host not in hosts]
    return aes, hosts


def open_warning() -> str:
    """The sentence the window shows while its node is open to any peer."""
    from mamview.core.net.scp import OPEN_WARNING

    return OPEN_WARNING[0].upper() + OPEN_WARNING[1:] + ". Restrict it in Settings → DICOM node."


def summary_text(summary) -> str:
    """A FetchSummary as sentences for a message box."""
    lines = [f"{summary.studies_found} MG studies found on {summary.pacs}; "
             f"{summary.already_in_library} already in the library; "
             f"{summary.studies_fetched} fetched ({summary.instances_moved} images)."]
    lines += [f"Failed: {f}" for f in summary.failures]
    return "\n".join(lines)
