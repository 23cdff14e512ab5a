"""DICOM peers: a PACS node written `AE@host:port`, the known nodes from the settings, C-ECHO.

Everything here returns results or raises `NetError` with a message a user can act on; network
failures never surface as tracebacks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

DEFAULT_OUR_AE = "MAMVIEW"
DEFAULT_TIMEOUT_S = 10.0


class NetError(Exception):
    """A network operation could not be done; the message says why, in words for the user."""


def check_ae_title(title: str) -> str:
    """The AE title stripped of spaces; ValueError when DICOM would not accept it
    (1–16 characters, no backslash, no control characters)."""
    t = (title or "").strip()
    if not t:
        raise ValueError("an AE title cannot be empty")
    if len(t) > 16:
        raise ValueError(f"AE title {t!r} is longer than 16 characters")
    if "\\" in t or any(ord(c) < 32 or ord(c) > 126 for c in t):
        raise ValueError(f"AE title {t!r} may only hold printable ASCII characters, no backslash")
    return t


@dataclass(frozen=True)
class PacsNode:
    """A remote DICOM application entity."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "PacsNode":
        """`AE@host:port` → PacsNode; ValueError with what is wrong and the expected form."""
        form = "expected AE@host:port, e.g. PACS@10.0.0.5:104"
        text = (text or "").strip()
        ae, sep, rest = text.rpartition("@")
        if not sep or not ae or not rest:
            raise ValueError(f"{text!r}: {form}")
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host or not port_text:
            raise ValueError(f"{text!r}: no port; {form}")
        host = host.strip("[]")  # [::1]:104
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"{text!r}: port {port_text!r} is not a number; {form}") from None
        return cls.make(ae, host, port)

    @classmethod
    def make(cls, ae_title: str, host: str, port: int) -> "PacsNode":
        """A checked node; ValueError on a bad AE title, empty host or port out of 1–65535."""
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"host {host!r} is not a host name or address")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port {port!r} is not between 1 and 65535")
        return cls(check_ae_title(ae_title), host, port)

    @classmethod
    def from_dict(cls, d: dict) -> "PacsNode":
        """A node from a settings entry {"ae_title", "host", "port"} (or {"address": "AE@h:p"})."""
        if not isinstance(d, dict):
            raise ValueError(f"a PACS node entry must be an object, not {d!r}")
        if "address" in d:
            return cls.parse(str(d["address"]))
        try:
            return cls.make(str(d["ae_title"]), str(d["host"]), int(d["port"]))
        except KeyError as exc:
            raise ValueError(f"PACS node entry {d!r} lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"PACS node entry {d!r}: {exc}") from None

    def as_dict(self, name: str = "") -> dict:
        """The settings form of this node."""
        d = {"ae_title": self.ae_title, "host": self.host, "port": self.port}
        if name:
            d["name"] = name
        return d

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def nodes_from_settings(settings) -> tuple[list[PacsNode], list[str]]:
    """The PACS nodes in `Settings.pacs_nodes`, and a message for each unusable entry."""
    nodes, errors = [], []
    for entry in getattr(settings, "pacs_nodes", None) or []:
        try:
            nodes.append(PacsNode.from_dict(entry))
        except ValueError as exc:
            errors.append(str(exc))
    return nodes, errors


def resolve_node(text: str, settings=None) -> PacsNode:
    """A node given as `AE@host:port`, or by the name / AE title of an entry in the settings."""
    if "@" in text:
        return PacsNode.parse(text)
    for entry in getattr(settings, "pacs_nodes", None) or []:
        if isinstance(entry, dict) and text in (entry.get("name"), entry.get("ae_title")):
            return PacsNode.from_dict(entry)
    raise ValueError(f"{text!r} is neither AE@host:port nor the name of a PACS in the settings")


# DIMSE statuses shared by every service (PS3.7 C), then those of C-FIND / C-MOVE (PS3.4 C.4)
_STATUS_WORDS = {
    0x0105: "no such attribute", 0x0106: "invalid attribute value",
    0x0110: "processing failure", 0x0112: "no such SOP instance",
    0x0117: "invalid object instance", 0x0118: "no such SOP class",
    0x0119: "class-instance conflict", 0x0122: "SOP class not supported",
    0x0124: "refused: not authorized", 0x0210: "duplicate invocation",
    0x0211: "unrecognized operation", 0x0212: "mistyped argument",
    0x0213: "resource limitation",
    0xA700: "refused: out of resources",
    0xA701: "refused: out of resources, unable to calculate the number of matches",
    0xA702: "refused: out of resources, unable to perform sub-operations",
    0xA801: "refused: move destination unknown",
    0xA900: "identifier does not match SOP class",
    0xB000: "sub-operations complete, one or more failures",
    0xFE00: "sub-operations terminated due to cancel indication",
}


def dimse_status_text(status: int) -> str:
    """The PS3.4 / PS3.7 meaning of a DIMSE status code, in words."""
    if status in _STATUS_WORDS:
        return _STATUS_WORDS[status]
    if 0xC000 <= status <= 0xCFFF:
        return "failed: unable to process"
    if 0xA000 <= status <= 0xAFFF:
        return "refused"
    if 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "unknown status"


@dataclass(frozen=True)
class EchoResult:
    """The outcome of one C-ECHO."""

    node: PacsNode
    ok: bool
    status: int | None  # DIMSE status of the C-ECHO response; None when no association
    message: str
    seconds: float


def association_failure(assoc, node: PacsNode, our_ae: str, connected: bool = True,
                        accepted: bool = False) -> str:
    """Why an association attempt failed, in words naming the cause (`connected`: the TCP
    connection opened; `accepted`: the peer accepted the association, before we found none of
    the services we asked for among what it accepted)."""
    if not connected:
        return (f"could not reach {node}: nothing answers at {node.host}:{node.port} (wrong "
                f"address or port, the PACS is down, or a firewall is in the way)")
    if getattr(assoc, "is_rejected", False):
        return _rejection(assoc, node, our_ae)
    if accepted:
        asked = sorted({_uid_name(cx.abstract_syntax)
                        for cx in getattr(assoc, "rejected_contexts", None) or []})
        return (f"{node} accepted the association but offers none of the services we asked "
                f"for ({'; '.join(asked) or 'none listed'})")
    if getattr(assoc, "is_aborted", False):
        return (f"{node} aborted the association as it was being made (some PACS do this when "
                f"they do not accept our AE title {our_ae} or the services asked for)")
    return (f"{node} took the connection at {node.host}:{node.port} but gave no DICOM answer "
            f"in time (is it a DICOM port? is the PACS overloaded?)")


# the causes a PACS administrator acts on, by (result source, diagnostic) of the A-ASSOCIATE-RJ
_REJECT_HINTS = {
    (1, 3): "the PACS does not know our AE title {our} (association rejected: calling AE not "
            "recognized); add {our} with our address to the PACS's modalities",
    (1, 7): "the PACS does not answer to the AE title {called} (association rejected: called "
            "AE title not recognised); check the PACS's AE title (dcmtk's dcmqrscp also says "
            "this when it does not accept our AE title {our} or our address)",
    (1, 2): "the PACS does not support the DICOM application context (association rejected: "
            "application context name not supported)",
    (2, 2): "the PACS does not support our DICOM protocol version (association rejected)",
    (3, 1): "the PACS is too busy right now (association rejected: temporary congestion); "
            "try again later",
    (3, 2): "the PACS serves as many associations as it allows (association rejected: local "
            "limit exceeded); try again later",
}


def _rejection(assoc, node: PacsNode, our_ae: str) -> str:
    try:
        rj = assoc.acceptor.primitive
        key = (int(rj.result_source), int(rj.diagnostic))
        why = f"{rj.reason_str}; {rj.result_str.lower()}, by the {rj.source_str}"
    except Exception:  # noqa: BLE001 - an odd or missing reject PDU still gets a message
        return f"{node} rejected the association from {our_ae} (no reason given)"
    hint = _REJECT_HINTS.get(key)
    if hint:
        return f"{node}: " + hint.format(our=our_ae, called=node.ae_title)
    return f"{node} rejected the association from {our_ae} ({why})"


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(str(uid)).name
    return name if name and name != str(uid) else str(uid)


def associate(ae, node: PacsNode, our_ae: str):
    """Request an association with `node`; returns it established, or raises NetError."""
    from pynetdicom import evt

    opened, accepted = [], []
    try:
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title,
                             evt_handlers=[(evt.EVT_CONN_OPEN, lambda e: opened.append(1)),
                                           (evt.EVT_ACCEPTED, lambda e: accepted.append(1))])
    except (OSError, ValueError) as exc:  # e.g. a host name that does not resolve
        raise NetError(f"could not reach {node}: {exc}") from None
    if not assoc.is_established:
        raise NetError(association_failure(assoc, node, our_ae, bool(opened), bool(accepted)))
    return assoc


def make_ae(our_ae: str, timeout: float = DEFAULT_TIMEOUT_S):
    """A pynetdicom AE with our title and bounded timeouts (no call waits forever)."""
    from pynetdicom import AE

    ae = AE(ae_title=check_ae_title(our_ae))
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def echo(node: PacsNode, our_ae: str = DEFAULT_OUR_AE,
         timeout: float = DEFAULT_TIMEOUT_S) -> EchoResult:
    """C-ECHO `node` as `our_ae`; never raises for network trouble (see EchoResult.message)."""
    from pynetdicom.sop_class import Verification

    t0 = time.perf_counter()
    ae = make_ae(our_ae, timeout)
    ae.add_requested_context(Verification)
    try:
        assoc = associate(ae, node, our_ae)
    except NetError as exc:
        return EchoResult(node, False, None, str(exc), time.perf_counter() - t0)
    started = time.perf_counter()
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    seconds = time.perf_counter() - t0
    status = getattr(rsp, "Status", None) if rsp else None
    if status is None:
        # long before the timeout: the peer ended the association rather than answer
        why = (f"ended the association instead of answering the C-ECHO: it may not allow our "
               f"AE title {our_ae} to (check its permissions for {our_ae})"
               if time.perf_counter() - started < timeout * 0.9 else
               f"did not answer the C-ECHO within {timeout:g} s")
        return EchoResult(node, False, None, f"{node} {why}", seconds)
    if status != 0x0000:
        return EchoResult(node, False, int(status), f"{node} answered C-ECHO with status "
                          f"0x{int(status):04X} ({dimse_status_text(int(status))})", seconds)
    return EchoResult(node, True, 0, f"{node} answered C-ECHO in {seconds * 1000:.0f} ms", seconds)
