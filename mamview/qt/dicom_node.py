"""The window's DICOM node and "Fetch priors": a thin Qt controller over core.net.

The node (core.net.StorageNode) runs on its own threads; its events come back through the
bridge. It does not score: the window's own inference service scores what it indexes, so the
worklist and chart update exactly as after a File → Import.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal

from mamview.core.paths import Library


class DicomNodeController(QObject):
    """Starts/stops the storage node and runs fetch-priors requests off the GUI thread."""

    status = Signal(str)  # one line for the status bar
    libraryChanged = Signal()  # received images were indexed (throttled)
    fetchDone = Signal(object, object)  # FetchSummary or None, error message or None

    def __init__(self, lib: Library, bridge, parent: QObject | None = None):
        super().__init__(parent)
        self.lib = lib
        self.bridge = bridge
        self.node = None
        self.received = 0
        bridge.nodeEvent.connect(self._on_event)
        # many small batches arrive during a C-MOVE: refresh the worklist at most once a second
        self._changed_timer = QTimer(self)
        self._changed_timer.setSingleShot(True)
        self._changed_timer.setInterval(1000)
        self._changed_timer.timeout.connect(self.libraryChanged.emit)

    @property
    def running(self) -> bool:
        return self.node is not None

    def start(self, ae_title: str, port: int) -> str | None:
        """Open the node; returns a message for the user when it cannot (port in use, bad AE)."""
        from mamview.core.net import NetError, StorageNode

        if self.node is not None:
            return None
        try:
            node = StorageNode(self.lib, ae_title=ae_title, port=port, score=False,
                               on_event=self.bridge.post_node_event)
            node.start()
        except (OSError, ValueError, NetError) as exc:
            msg = f"The DICOM node could not start on port {port}: {exc}"
            self.status.emit(msg)
            return msg
        self.node = node
        self.status.emit(f"DICOM node {node.ae_title} listening on port {node.bound_port}")
        return None

    def stop(self) -> None:
        """Close the port; what was received stays in the library's inbox and index."""
        node, self.node = self.node, None
        if node is not None:
            node.stop()
            self.status.emit("DICOM node stopped")

    def fetch_priors(self, patient_id: str, pacs_text: str, settings) -> str | None:
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
        self.status.emit(f"Fetching priors of {patient_id} from {pacs} …")

        def done(summary, error):
            if error is not None and not isinstance(error, NetError):
                error = f"{type(error).__name__}: {error}"
            self.fetchDone.emit(summary, None if error is None else str(error))

        self.bridge.run_task(lambda: fetch_priors(self.lib, patient_id, pacs, our_ae), done)
        return None

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


def summary_text(summary) -> str:
    """A FetchSummary as sentences for a message box."""
    lines = [f"{summary.studies_found} MG studies found on {summary.pacs}; "
             f"{summary.already_in_library} already in the library; "
             f"{summary.studies_fetched} fetched ({summary.instances_moved} images)."]
    lines += [f"Failed: {f}" for f in summary.failures]
    return "\n".join(lines)
