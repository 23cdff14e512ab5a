"""Query/retrieve and send: find a woman's studies on a PACS, bring her priors in, send files out.

`fetch_priors` C-FINDs the patient's studies, skips those the library already holds and, by
default, those dated on or after her latest exam here (priors are what a reader compares
with), and C-MOVEs the rest to a storage node (ours, usually running in the same process),
which files and indexes them. Study Root is asked for first; a PACS that offers only Patient
Root is asked at PATIENT level, then STUDY level under her. IssuerOfPatientID goes into the
query when the library knows it for her (Patient Root keys a woman by PatientID alone below
the PATIENT level: there the issuer only decides whether she is on the PACS at all). A `cancel` event stops the work between studies and
sends C-CANCEL for the running request. `send_files` is a plain C-STORE SCU (used to send DICOM
SR reports). Network trouble ends in `NetError` with a message naming the cause, never a
traceback.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from mamview.core import safety
from mamview.core.net.nodes import (DEFAULT_OUR_AE, DEFAULT_TIMEOUT_S, NetError, PacsNode,
                                    associate, dimse_status_text, make_ae)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve Information Model - MOVE
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root Q/R Information Model - FIND
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"  # Patient Root Q/R Information Model - MOVE
FIND_MODEL, MOVE_MODEL = STUDY_ROOT_FIND, STUDY_ROOT_MOVE  # the first choice
EXPLICIT = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian

_MODEL_NAMES = {STUDY_ROOT_FIND: "Study Root", STUDY_ROOT_MOVE: "Study Root",
                PATIENT_ROOT_FIND: "Patient Root", PATIENT_ROOT_MOVE: "Patient Root"}
MAX_MATCHES = 5000  # a query answered with more is cut short (C-CANCEL): bounded memory
CANCEL_GRACE_S = 10.0  # after C-CANCEL, how long the PACS has to stop before we abort
log = logging.getLogger("mamview.net")


def _status_text(status: int) -> str:
    return f"status 0x{status:04X}: {dimse_status_text(status)}"


def _comment(status) -> str:
    """The peer's ErrorComment (0000,0902), shown safely; '' when none."""
    try:
        text = str(status.get("ErrorComment", "") or "").strip()
    except Exception:  # noqa: BLE001 - a malformed comment is not worth a failure
        return ""
    return f" (the PACS says: {safety.printable(text[:200])})" if text else ""


@dataclass(frozen=True)
class StudyInfo:
    """One study found on a PACS."""

    study_instance_uid: str
    patient_id: str
    study_date: str  # YYYYMMDD as the PACS gave it
    accession_number: str
    description: str
    modalities: tuple[str, ...]
    instances: int | None
    issuer: str = ""  # IssuerOfPatientID as the PACS gave it ('' when it gave none)


@dataclass
class FetchSummary:
    """What `fetch_priors` did."""

    pacs: str
    patient_id: str
    issuer: str = ""  # the IssuerOfPatientID sent in the query ('' when none)
    query_model: str = ""  # "Study Root" or "Patient Root"
    latest_in_library: str = ""  # YYYY-MM-DD of her latest exam here: priors are older
    studies_found: int = 0
    already_in_library: int = 0
    newer_left: int = 0  # missing studies not fetched: on/after her latest exam, or undated
    studies_fetched: int = 0
    instances_moved: int = 0
    instances_failed: int = 0
    cancelled: bool = False
    failures: list[str] = field(default_factory=list)  # one message per study that failed
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.instances_failed and not self.cancelled

    def lines(self, all_hint: str = "with --all") -> list[str]:
        """The summary as sentences for the user (the CLI prints them, the window shows them);
        `all_hint` says how to ask for the newer studies too ('' for nothing)."""
        who = self.patient_id + (f" (issuer {self.issuer})" if self.issuer else "")
        head = (f"{self.pacs}: {self.studies_found} studies of {who}; "
                f"{self.already_in_library} already in the library, "
                f"{self.studies_fetched} fetched ({self.instances_moved} images) "
                f"in {self.seconds:.1f} s.")
        out = [head]
        if self.newer_left:
            out.append(f"{self.newer_left} newer or undated studies left on the PACS (not "
                       f"before her latest exam here, {self.latest_in_library})"
                       + (f"; fetch them {all_hint}." if all_hint else "."))
        if self.cancelled:
            out.append("Cancelled: the studies not yet fetched stay on the PACS.")
        out += [f"failed: {msg}" for msg in self.failures]
        return out


@dataclass
class SendSummary:
    """What `send_files` did."""

    node: str
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0


def _associate(node: PacsNode, our_ae: str, contexts: Iterable, timeout: float):
    ae = make_ae(our_ae, timeout)
    for ctx in contexts:
        if isinstance(ctx, tuple):
            ae.add_requested_context(*ctx)
        else:
            ae.add_requested_context(ctx)
    return associate(ae, node, our_ae)


def _choose(assoc, preferred: Iterable[str], node: PacsNode, what: str) -> str:
    """The first of `preferred` the peer accepted (Study Root before Patient Root)."""
    offered = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    for uid in preferred:
        if uid in offered:
            return uid
    assoc.release()
    raise NetError(f"{node} offers neither Study Root nor Patient Root {what}, which we need")


@contextmanager
def _cancellable(assoc, cancel: threading.Event | None, msg_id: int, model: str):
    """While the block runs a request, a set `cancel` sends C-CANCEL for it; a peer that then
    does not finish within CANCEL_GRACE_S has the association aborted (no wait is unbounded)."""
    if cancel is None:
        yield
        return
    done = threading.Event()

    def watch():
        while not done.is_set():
            if cancel.wait(0.1):
                break
        if done.is_set():
            return
        try:
            assoc.send_c_cancel(msg_id, query_model=model)
        except Exception:  # noqa: BLE001 - the association may have ended meanwhile
            return
        log.info("sent C-CANCEL for request %d (%s)", msg_id, _MODEL_NAMES.get(model, model))
        if not done.wait(CANCEL_GRACE_S) and assoc.is_established:
            log.warning("the peer did not stop within %g s of the C-CANCEL: aborting",
                        CANCEL_GRACE_S)
            assoc.abort()

    t = threading.Thread(target=watch, name="mamview-qr-cancel", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join(timeout=CANCEL_GRACE_S + 5)


class _Cancelled(Exception):
    pass


def _no_answer(assoc, node: PacsNode, started: float, wait: float, what: str,
               our_ae: str) -> str:
    """Why a request got no response: the peer ended the association (Orthanc does so for a
    request its permissions refuse), or the wait ran out."""
    if time.monotonic() - started < wait * 0.9:
        assoc.join(2.0)  # the association thread is handling the peer's abort or close
        return (f"{node} ended the association instead of answering the {what}: it may not "
                f"allow our AE title {our_ae} to do this (check its permissions for {our_ae})")
    return f"{node} did not answer the {what} within {wait:g} s"


def _c_find(assoc, query, model: str, msg_id: int, node: PacsNode, our_ae: str,
            timeout: float, cancel: threading.Event | None) -> list:
    """The matches of one C-FIND (bounded by MAX_MATCHES); NetError naming the cause;
    _Cancelled when `cancel` stopped it."""
    found = []
    started = time.monotonic()
    with _cancellable(assoc, cancel, msg_id, model):
        for status, ident in assoc.send_c_find(query, model, msg_id=msg_id):
            if status is None or "Status" not in status:
                if cancel is not None and cancel.is_set():
                    raise _Cancelled()
                raise NetError(_no_answer(assoc, node, started, timeout, "query (C-FIND)",
                                          our_ae))
            started = time.monotonic()  # the timeout bounds the wait between two responses
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if ident is not None:
                    found.append(ident)
                if len(found) > MAX_MATCHES:
                    assoc.abort()  # the rest is not wanted, and would keep coming
                    raise NetError(f"{node} answered with more than {MAX_MATCHES} matches; "
                                   f"the query was stopped")
            elif code == 0xFE00:
                raise _Cancelled()
            elif code != 0x0000:
                raise NetError(f"{node} refused the query ({_status_text(code)})"
                               f"{_comment(status)}")
    return found


def _study_query(patient_id: str, issuer: str | None, model: str):
    from pydicom.dataset import Dataset

    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = patient_id
    if model == STUDY_ROOT_FIND:  # patient keys other than the unique one: Study Root only
        q.IssuerOfPatientID = issuer or ""
    q.StudyInstanceUID = ""
    q.StudyDate = ""
    q.AccessionNumber = ""
    q.StudyDescription = ""
    q.ModalitiesInStudy = ""
    q.NumberOfStudyRelatedInstances = ""
    return q


def _find(node: PacsNode, patient_id: str, our_ae: str, modality: str | None, timeout: float,
          issuer: str | None, cancel: threading.Event | None) -> tuple[list[StudyInfo], str]:
    """(her studies oldest first, the model used); _Cancelled when cancelled."""
    from pydicom.dataset import Dataset

    if not (patient_id or "").strip():
        raise ValueError("a patient ID is needed to look for priors")
    assoc = _associate(node, our_ae, [STUDY_ROOT_FIND, PATIENT_ROOT_FIND], timeout)
    try:
        model = _choose(assoc, [STUDY_ROOT_FIND, PATIENT_ROOT_FIND], node, "query (C-FIND)")
        if model == PATIENT_ROOT_FIND:
            # Patient Root: find her at PATIENT level (the issuer tells two women apart there),
            # then her studies at STUDY level under her unique key
            q = Dataset()
            q.QueryRetrieveLevel = "PATIENT"
            q.PatientID = patient_id
            q.IssuerOfPatientID = issuer or ""
            q.PatientName = ""
            women = [w for w in _c_find(assoc, q, model, 1, node, our_ae, timeout, cancel)
                     if _same_woman(w, patient_id, issuer)]
            idents = (_c_find(assoc, _study_query(patient_id, issuer, model), model, 2, node,
                              our_ae, timeout, cancel) if women else [])
        else:
            idents = _c_find(assoc, _study_query(patient_id, issuer, model), model, 1, node,
                             our_ae, timeout, cancel)
    finally:
        if assoc.is_established:
            assoc.release()
    found = [_study(i) for i in idents if i.get("StudyInstanceUID")]
    if modality:
        found = [s for s in found if not s.modalities or modality in s.modalities]
    # a lenient PACS may match wildcards, other women or other issuers: keep hers
    found = [s for s in found if (not s.patient_id or s.patient_id == patient_id)
             and (not issuer or not s.issuer or s.issuer == issuer)]
    return sorted(found, key=lambda s: (s.study_date, s.study_instance_uid)), _MODEL_NAMES[model]


def _same_woman(ident, patient_id: str, issuer: str | None) -> bool:
    pid = str(ident.get("PatientID", "") or "")
    got = str(ident.get("IssuerOfPatientID", "") or "")
    return pid == patient_id and (not issuer or not got or got == issuer)


def find_studies(node: PacsNode, patient_id: str, our_ae: str = DEFAULT_OUR_AE,
                 modality: str | None = "MG",
                 timeout: float = DEFAULT_TIMEOUT_S, *, issuer: str | None = None,
                 cancel: threading.Event | None = None) -> list[StudyInfo]:
    """C-FIND the studies of `patient_id` (and `issuer`, when given), oldest first: Study Root
    at STUDY level, or Patient Root (PATIENT level, then STUDY level) on a PACS without it.

    With `modality`, studies whose ModalitiesInStudy is known and lacks it are left out
    (a PACS that does not fill ModalitiesInStudy gets every study of the patient). A set
    `cancel` sends C-CANCEL and raises NetError("cancelled")."""
    try:
        return _find(node, patient_id, our_ae, modality, timeout, issuer, cancel)[0]
    except _Cancelled:
        raise NetError(f"the query to {node} was cancelled") from None


def _study(ident) -> StudyInfo:
    mods = ident.get("ModalitiesInStudy", "") or ""
    mods = tuple(str(m) for m in mods) if not isinstance(mods, str) else tuple(
        m for m in mods.split("\\") if m)
    n = ident.get("NumberOfStudyRelatedInstances", None)
    try:
        n = int(n) if n not in (None, "") else None
    except (TypeError, ValueError):
        n = None
    return StudyInfo(str(ident.StudyInstanceUID), str(ident.get("PatientID", "") or ""),
                     str(ident.get("StudyDate", "") or ""),
                     str(ident.get("AccessionNumber", "") or ""),
                     str(ident.get("StudyDescription", "") or ""), mods, n,
                     str(ident.get("IssuerOfPatientID", "") or ""))


def library_study_uids(lib) -> set[str]:
    """Study Instance UIDs of the images the library holds (present on disk)."""
    from mamview.core.cache import db, reads

    # opened for writing: a library with no database yet gets one (and then holds nothing)
    with db.opened(lib.database) as conn:
        return reads.present_study_uids(conn)


def her_in_library(lib, patient_id: str, issuer: str | None = None) -> tuple[str, str]:
    """(issuer to query with, date YYYY-MM-DD of her latest exam here) for `patient_id`.

    `issuer` None: the library's, when it holds exactly one woman under this PatientID (with
    two issuers it cannot tell which is meant and sends none); '' sends none."""
    from mamview.core.cache import db, reads

    with db.opened(lib.database) as conn:
        women = reads.women_with_patient_id(conn, patient_id)
    if issuer is None:
        issuer = women[0]["issuer"] if len(women) == 1 else ""
    mine = [w for w in women if not issuer or w["issuer"] == issuer] or women
    return issuer, max((w["latest_exam"] for w in mine), default="")


def _dicom_date(iso: str) -> str:
    return iso.replace("-", "")


def _date_of(study: StudyInfo) -> str:
    """The study's date as YYYYMMDD ('' when the PACS gave none or an unusable one; the
    old ACR-NEMA form 2024.06.01 is read too)."""
    digits = "".join(c for c in study.study_date if c.isdigit())
    return digits if len(digits) == 8 else ""


def fetch_priors(lib, patient_id: str, pacs: PacsNode, our_ae: str = DEFAULT_OUR_AE,
                 move_destination: str | None = None,
                 progress: Callable[[int, int, StudyInfo | None], None] | None = None,
                 modality: str | None = "MG",
                 timeout: float = DEFAULT_TIMEOUT_S, *, all_studies: bool = False,
                 issuer: str | None = None,
                 cancel: threading.Event | None = None) -> FetchSummary:
    """Bring the studies of `patient_id` that the library lacks from `pacs` (C-FIND, C-MOVE).

    By default only her priors: studies dated before her latest exam in the library (all of
    them when she has none here); `all_studies` fetches every missing study, newer ones too.
    `issuer`: see `her_in_library`. The PACS sends the images to `move_destination` (default
    `our_ae`): a storage node that the PACS knows by that AE title. `progress(done, total,
    study)` is called before each study and once at the end. A set `cancel` stops the work
    (C-CANCEL for the running request) and the summary says `cancelled`. Raises NetError when
    the PACS cannot be reached or refuses to talk to us; a study that fails is reported in the
    summary and the others are still fetched."""
    from pydicom.dataset import Dataset

    t0 = time.perf_counter()
    issuer, latest = her_in_library(lib, patient_id, issuer)
    summary = FetchSummary(str(pacs), patient_id, issuer=issuer, latest_in_library=latest)

    def finish() -> FetchSummary:
        summary.seconds = time.perf_counter() - t0
        return summary

    try:
        studies, summary.query_model = _find(pacs, patient_id, our_ae, modality, timeout,
                                             issuer, cancel)
    except _Cancelled:
        summary.cancelled = True
        return finish()
    summary.studies_found = len(studies)
    have = library_study_uids(lib)
    missing = [s for s in studies if s.study_instance_uid not in have]
    summary.already_in_library = len(studies) - len(missing)
    todo = missing
    if latest and not all_studies:
        before = _dicom_date(latest)
        todo = [s for s in missing if _date_of(s) and _date_of(s) < before]
        summary.newer_left = len(missing) - len(todo)
    if not todo or (cancel is not None and cancel.is_set()):
        summary.cancelled = bool(todo)
        if progress:
            progress(0, 0, None)
        return finish()
    dest = move_destination or our_ae
    # sub-operations can take long: the DIMSE timeout bounds the wait between two responses
    wait = max(timeout, 60)
    assoc = _associate(pacs, our_ae, [STUDY_ROOT_MOVE, PATIENT_ROOT_MOVE], wait)
    try:
        model = _choose(assoc, [STUDY_ROOT_MOVE, PATIENT_ROOT_MOVE], pacs, "retrieve (C-MOVE)")
        for i, study in enumerate(todo):
            if progress:
                progress(i, len(todo), study)
            if cancel is not None and cancel.is_set():
                summary.cancelled = True
                break
            ident = Dataset()
            ident.QueryRetrieveLevel = "STUDY"
            if model == PATIENT_ROOT_MOVE:  # the unique keys of every level above
                ident.PatientID = patient_id
            ident.StudyInstanceUID = study.study_instance_uid
            final = None
            started = time.monotonic()
            with _cancellable(assoc, cancel, i + 1, model):
                for status, _ in assoc.send_c_move(ident, dest, model, msg_id=i + 1):
                    if status is None or "Status" not in status:
                        final = None
                        break
                    final, started = status, time.monotonic()
            # what the peer sent is shown escaped: it reaches terminals and logs
            label = safety.printable(
                f"study {study.study_date or '(no date)'} {study.study_instance_uid}")
            if final is None:
                if cancel is not None and cancel.is_set():
                    summary.cancelled = True
                    break
                summary.failures.append(f"{label}: " + _no_answer(
                    assoc, pacs, started, wait, "retrieve (C-MOVE)", our_ae))
                if not assoc.is_established:
                    break
                continue
            if _account(summary, final, label, pacs, dest):
                summary.cancelled = True
                break
    finally:
        if assoc.is_established:
            assoc.release()
    if progress:
        progress(len(todo), len(todo), None)
    return finish()


def _account(summary: FetchSummary, final, label: str, pacs: PacsNode, dest: str) -> bool:
    """Add one C-MOVE's final response to `summary`; True when the PACS says it was cancelled."""
    code = int(final.Status)
    done = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    warned = int(final.get("NumberOfWarningSuboperations", 0) or 0)
    summary.instances_moved += done + warned
    summary.instances_failed += failed
    said = _comment(final)
    if code == 0xFE00:
        return True
    if code == 0x0000 or (0xB000 <= code <= 0xBFFF and done + warned):
        summary.studies_fetched += 1
        if failed:
            summary.failures.append(f"{label}: {failed} images could not be sent to {dest}")
    elif code == 0xA801:
        summary.failures.append(
            f"{label}: the PACS does not know the move destination {dest}: add it to its "
            f"modalities (AE title {dest}, our host and the port our node listens on){said}")
    elif failed and not done:
        summary.failures.append(
            f"{label}: {pacs} could not deliver the images to {dest} ({failed} failed, "
            f"{_status_text(code)}): nothing accepted them at the host and port the PACS has "
            f"for {dest}; check that our node is running there and lets {pacs.ae_title} in{said}")
    elif 0xC000 <= code <= 0xCFFF and not (done or failed or warned):
        # Orthanc answers so, without one sub-operation, for a destination it does not know
        # (and for one it cannot connect to): both are fixed in its list of modalities
        summary.failures.append(
            f"{label}: {pacs} refused to start the transfer ({_status_text(code)}): the PACS "
            f"does not know the move destination {dest}: add it to its modalities (AE title "
            f"{dest}, our host and the port our node listens on), or correct the host and port "
            f"it has for {dest}{said}")
    else:
        summary.failures.append(f"{label}: {pacs} refused the transfer ({_status_text(code)})"
                                f"{said}")
    return False


def send_files(node: PacsNode, paths: Iterable[str | os.PathLike], our_ae: str = DEFAULT_OUR_AE,
               timeout: float = DEFAULT_TIMEOUT_S) -> SendSummary:
    """C-STORE DICOM files to `node` in their own transfer syntax (one association).

    Files that cannot be read, or that the node refuses, are listed in `failed` with the
    reason; raises NetError only when no association can be made."""
    from pydicom import dcmread

    t0 = time.perf_counter()
    summary = SendSummary(str(node))
    ready: list[tuple[str, str, str]] = []  # (path, sop class, transfer syntax)
    for p in paths:
        p = str(p)
        try:
            ds = dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            sop = str(ds.file_meta.MediaStorageSOPClassUID or ds.SOPClassUID)
            ts = str(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
            summary.failed.append((p, f"not a readable DICOM file: {exc}"))
            continue
        ready.append((p, sop, ts))
    # each file's own syntax, and Explicit VR Little Endian as a fallback for a node that
    # does not take compressed objects (we then decompress before sending)
    contexts = sorted({(sop, ts) for _, sop, ts in ready} | {(sop, EXPLICIT) for _, sop, _ in ready})
    if len(contexts) > 128:
        raise NetError(f"{len(contexts)} kinds of file (SOP class × transfer syntax) are more "
                       f"than one association can carry (128); send them in parts")
    if not ready:
        summary.seconds = time.perf_counter() - t0
        return summary
    assoc = _associate(node, our_ae, [(sop, [ts]) for sop, ts in contexts], timeout)
    try:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for p, sop, ts in ready:
            if (sop, ts) in accepted:
                payload = Path(p)
            elif (sop, EXPLICIT) in accepted:
                try:
                    payload = _uncompressed(p)
                except Exception as exc:  # noqa: BLE001 - a decoder failure is this file's
                    summary.failed.append((p, f"{node} takes it only uncompressed, and it "
                                              f"could not be decompressed: {exc}"))
                    continue
            else:
                summary.failed.append((p, f"{node} does not accept this kind of object "
                                          f"({sop})"))
                continue
            try:
                rsp = assoc.send_c_store(payload)
            except Exception as exc:  # noqa: BLE001
                summary.failed.append((p, f"{type(exc).__name__}: {exc}"))
                continue
            code = int(rsp.Status) if rsp is not None and "Status" in rsp else None
            if code is None:
                summary.failed.append((p, f"{node} did not answer (timeout or aborted)"))
                if not assoc.is_established:
                    break
            elif code == 0x0000 or 0xB000 <= code <= 0xBFFF:
                summary.sent += 1
            else:
                summary.failed.append((p, f"{node} refused it: status 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
    summary.seconds = time.perf_counter() - t0
    return summary


def _uncompressed(path: str):
    """The dataset of `path` in Explicit VR Little Endian (decompressed when it was not)."""
    from pydicom import dcmread

    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    elif ds.file_meta.TransferSyntaxUID != EXPLICIT:
        ds.file_meta.TransferSyntaxUID = EXPLICIT
    return ds
