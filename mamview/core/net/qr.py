"""Query/retrieve and send: find a woman's studies on a PACS, bring her priors in, send files out.

`fetch_priors` C-FINDs the patient's studies (Study Root), skips those the library already
holds, and C-MOVEs the rest to a storage node (ours, usually running in the same process), which
files and indexes them. `send_files` is a plain C-STORE SCU (used to send DICOM SR reports).
Network trouble ends in `NetError` with a message for the user, never a traceback.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from mamview.core.net.nodes import (DEFAULT_OUR_AE, DEFAULT_TIMEOUT_S, NetError, PacsNode,
                                    associate, make_ae)

FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve Information Model - MOVE
EXPLICIT = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian

# C-FIND / C-MOVE failure statuses a user can act on (PS3.4 C.4)
_STATUS_WORDS = {
    0xA700: "the PACS is out of resources",
    0xA701: "the PACS is out of resources (could not count the matches)",
    0xA702: "the PACS is out of resources (could not run the sub-operations)",
    0xA801: "the PACS does not know the move destination AE title; add our AE title, host and "
            "port to the PACS's list of destinations",
    0xA900: "the PACS did not understand the query (identifier does not match SOP class)",
    0xFE00: "the PACS cancelled the operation",
}


def _status_text(status: int) -> str:
    if status in _STATUS_WORDS:
        return _STATUS_WORDS[status]
    if 0xC000 <= status <= 0xCFFF:
        return f"the PACS could not process the request (status 0x{status:04X})"
    return f"status 0x{status:04X}"


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


@dataclass
class FetchSummary:
    """What `fetch_priors` did."""

    pacs: str
    patient_id: str
    studies_found: int = 0
    already_in_library: int = 0
    studies_fetched: int = 0
    instances_moved: int = 0
    instances_failed: int = 0
    failures: list[str] = field(default_factory=list)  # one message per study that failed
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.instances_failed


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


def _accepted(assoc, abstract_syntax: str, node: PacsNode) -> None:
    if not any(cx.abstract_syntax == abstract_syntax for cx in assoc.accepted_contexts):
        assoc.release()
        raise NetError(f"{node} does not offer the Study Root query/retrieve service we need")


def find_studies(node: PacsNode, patient_id: str, our_ae: str = DEFAULT_OUR_AE,
                 modality: str | None = "MG",
                 timeout: float = DEFAULT_TIMEOUT_S) -> list[StudyInfo]:
    """C-FIND (Study Root, STUDY level) the studies of `patient_id`, oldest first.

    With `modality`, studies whose ModalitiesInStudy is known and lacks it are left out
    (a PACS that does not fill ModalitiesInStudy gets every study of the patient)."""
    from pydicom.dataset import Dataset

    if not (patient_id or "").strip():
        raise ValueError("a patient ID is needed to look for priors")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    query.StudyDate = ""
    query.AccessionNumber = ""
    query.StudyDescription = ""
    query.ModalitiesInStudy = ""
    query.NumberOfStudyRelatedInstances = ""
    assoc = _associate(node, our_ae, [FIND_MODEL], timeout)
    _accepted(assoc, FIND_MODEL, node)
    found: list[StudyInfo] = []
    try:
        for status, ident in assoc.send_c_find(query, FIND_MODEL):
            if status is None or "Status" not in status:
                raise NetError(f"{node} stopped answering the query (timeout or aborted)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if ident is not None and ident.get("StudyInstanceUID"):
                    found.append(_study(ident))
            elif code != 0x0000:
                raise NetError(f"{node} refused the query: {_status_text(code)}")
    finally:
        if assoc.is_established:
            assoc.release()
    if modality:
        found = [s for s in found if not s.modalities or modality in s.modalities]
    if patient_id:  # a lenient PACS may match wildcards or other women: keep exact IDs
        found = [s for s in found if not s.patient_id or s.patient_id == patient_id]
    return sorted(found, key=lambda s: (s.study_date, s.study_instance_uid))


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
                     str(ident.get("StudyDescription", "") or ""), mods, n)


def library_study_uids(lib) -> set[str]:
    """Study Instance UIDs of the images the library holds (present on disk)."""
    from mamview.core.cache import db, reads

    # opened for writing: a library with no database yet gets one (and then holds nothing)
    with db.opened(lib.database) as conn:
        return reads.present_study_uids(conn)


def fetch_priors(lib, patient_id: str, pacs: PacsNode, our_ae: str = DEFAULT_OUR_AE,
                 move_destination: str | None = None,
                 progress: Callable[[int, int, StudyInfo | None], None] | None = None,
                 modality: str | None = "MG",
                 timeout: float = DEFAULT_TIMEOUT_S) -> FetchSummary:
    """Bring the studies of `patient_id` that the library lacks from `pacs` (C-FIND, C-MOVE).

    The PACS sends the images to `move_destination` (default `our_ae`): a storage node that the
    PACS knows by that AE title. `progress(done, total, study)` is called before each study and
    once at the end. Raises NetError when the PACS cannot be reached or refuses to talk to us;
    a study that fails is reported in the summary and the others are still fetched."""
    from pydicom.dataset import Dataset

    t0 = time.perf_counter()
    summary = FetchSummary(str(pacs), patient_id)
    studies = find_studies(pacs, patient_id, our_ae, modality, timeout)
    summary.studies_found = len(studies)
    have = library_study_uids(lib)
    todo = [s for s in studies if s.study_instance_uid not in have]
    summary.already_in_library = len(studies) - len(todo)
    if not todo:
        if progress:
            progress(0, 0, None)
        summary.seconds = time.perf_counter() - t0
        return summary
    dest = move_destination or our_ae
    # sub-operations can take long: the DIMSE timeout bounds the wait between two responses
    assoc = _associate(pacs, our_ae, [MOVE_MODEL], max(timeout, 60))
    _accepted(assoc, MOVE_MODEL, pacs)
    try:
        for i, study in enumerate(todo):
            if progress:
                progress(i, len(todo), study)
            ident = Dataset()
            ident.QueryRetrieveLevel = "STUDY"
            ident.StudyInstanceUID = study.study_instance_uid
            final = None
            for status, _ in assoc.send_c_move(ident, dest, MOVE_MODEL):
                if status is None or "Status" not in status:
                    final = None
                    break
                final = status
            label = f"study {study.study_date or '(no date)'} {study.study_instance_uid}"
            if final is None:
                summary.failures.append(f"{label}: {pacs} stopped answering (timeout or aborted)")
                if not assoc.is_established:
                    break
                continue
            code = int(final.Status)
            done = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
            failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
            summary.instances_moved += done
            summary.instances_failed += failed
            if code == 0x0000 or (code == 0xB000 and done):
                summary.studies_fetched += 1
                if failed:
                    summary.failures.append(f"{label}: {failed} images could not be sent")
            elif failed and not done:
                summary.failures.append(
                    f"{label}: {pacs} could not deliver the images to {dest} "
                    f"(status 0x{code:04X}); check that our node is running and that the PACS "
                    f"has the right host and port for {dest}")
            else:
                summary.failures.append(f"{label}: {_status_text(code)}")
    finally:
        if assoc.is_established:
            assoc.release()
    if progress:
        progress(len(todo), len(todo), None)
    summary.seconds = time.perf_counter() - t0
    return summary


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
