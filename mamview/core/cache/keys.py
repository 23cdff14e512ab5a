"""Keys derived from the data, never from insertion order: patients, exams and score cache keys.

An interrupted import run again ends with the same rows; a score is reused only when its key (model
identity and the exact input files) is unchanged. No SQL here.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from mamview.core.domain import ImageHeader


NO_ID_MARKER = "no-id:"


def escape_key_part(value: str) -> str:
    """`value` with `%` and `|` percent-escaped, so `|` can separate the parts of a key.

    Values without these characters are unchanged, so keys written before stay valid.
    """
    return value.replace("%", "%25").replace("|", "%7C")


def patient_key_of(issuer: str, patient_id: str, study_uid: str = "") -> str:
    """The patient key for these values (see `patient_key`)."""
    pid = patient_id.strip()
    if not pid:
        return f"|{NO_ID_MARKER}{escape_key_part(study_uid)}"
    pid = escape_key_part(pid)
    if pid.startswith(NO_ID_MARKER):
        pid = "%6E" + pid[1:]  # 'n' escaped: a real ID never reads as the no-ID group
    return f"{escape_key_part(issuer.strip())}|{pid}"


def patient_key(header: ImageHeader) -> str:
    """Stable key of the woman an image belongs to: issuer|PatientID, each part escaped.

    Files without a PatientID are grouped per study, never merged with other women.
    """
    return patient_key_of(header.issuer_of_patient_id, header.patient_id, header.study_instance_uid)


def iso_date(dicom_date: str) -> str:
    """'20240131' → '2024-01-31'; anything unparseable → ''."""
    d = (dicom_date or "").strip()
    if len(d) == 8 and d.isdigit():
        return f"{d[:4]}-{d[4:6]}-{d[6:]}"
    return ""


def exam_key(header: ImageHeader) -> str:
    """A screening exam is one woman's images of one day: studies split per image merge."""
    return exam_key_of(patient_key(header), header.study_date, header.content_date,
                       header.study_instance_uid)


def exam_key_of(patient: str, study_date: str, content_date: str, study_uid: str) -> str:
    """The exam key for these values (see `exam_key`; study members use it too)."""
    date = iso_date(study_date) or iso_date(content_date)
    return f"{patient}|{date or 'study:' + escape_key_part(study_uid)}"


def cache_key(identity, inputs: Sequence[tuple[str, int, int]]) -> str:
    """Key of a score: model id, weights, calibrator, preprocessing and each input image's
    (SOP UID, size, mtime). Any change in one of them means a new computation."""
    h = hashlib.sha256()
    for part in (identity.model_id, identity.version, identity.weights_sha256,
                 identity.calibrator_sha256, identity.preprocessing_version):
        h.update(str(part).encode() + b"\0")
    for uid, size, mtime in inputs:
        h.update(f"{uid}:{size}:{mtime}".encode() + b"\0")
    return h.hexdigest()


def unscorable_key(identity, images: Iterable[tuple[str, int, int]]) -> str:
    """Key of an 'unscorable' result: the model and every image of the exam (SOP UID, size,
    mtime), so an exam is looked at again when one of its files is added, removed or replaced."""
    return cache_key(identity, sorted(images)) + ":unscorable"
