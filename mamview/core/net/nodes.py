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


@dataclass(frozen=True)
class EchoResult:
    """The outcome of one C-ECHO."""

    node: PacsNode
    ok: bool
    status: int | None  # DIMSE status of the C-ECHO response; None when no association
    message: str
    seconds: float


def association_failure(assoc, node: PacsNode, our_ae: str, connected: bool = True) -> str:
    """Why an association attempt failed, for the user (`connected`: the TCP connection opened)."""
    if not connected:
        return (f"could not reach {node}: nothing accepts connections at {node.host} port "
                f"{node.port} (wrong address or port, PACS down, or a firewall)")
    if getattr(assoc, "is_rejected", False):
        rsd = _reject_reason(assoc)
        return (f"{node} rejected the association from {our_ae!r}{rsd}; check that the PACS "
                f"knows our AE title and address")
    if getattr(assoc, "is_aborted", False):
        return (f"{node} aborted the association (it may not accept the requested service or "
                f"our AE title {our_ae!r})")
    return (f"could not reach {node}: no DICOM answer from {node.host} port {node.port} "
            f"(wrong address or port, PACS down, or a firewall)")


def _reject_reason(assoc) -> str:
    try:
        rj = assoc.acceptor.primitive
        diag = {1: "no reason given", 2: "application context not supported",
                3: "calling AE title not recognised", 7: "called AE title not recognised"}
        if rj is not None and rj.result_source == 1:
            return f" ({diag.get(rj.diagnostic, f'reason {rj.diagnostic}')})"
    except Exception:  # noqa: BLE001 - the reason is a nicety
        pass
    return ""


def associate(ae, node: PacsNode, our_ae: str):
    """Request an association with `node`; returns it established, or raises NetError."""
    from pynetdicom import evt

    opened = []
    try:
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title,
                             evt_handlers=[(evt.EVT_CONN_OPEN, lambda e: opened.append(1))])
    except (OSError, ValueError) as exc:  # e.g. a host name that does not resolve
        raise NetError(f"could not reach {node}: {exc}") from None
    if not assoc.is_established:
        raise NetError(association_failure(assoc, node, our_ae, bool(opened)))
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
    try:
        rsp = assoc.send_c_echo()
    finally:
        assoc.release()
    seconds = time.perf_counter() - t0
    status = getattr(rsp, "Status", None) if rsp else None
    if status is None:
        return EchoResult(node, False, None, f"{node} did not answer the C-ECHO in time", seconds)
    if status != 0x0000:
        return EchoResult(node, False, int(status), f"{node} answered C-ECHO with status "
                          f"0x{int(status):04X}", seconds)
    return EchoResult(node, True, 0, f"{node} answered C-ECHO in {seconds * 1000:.0f} ms", seconds)
