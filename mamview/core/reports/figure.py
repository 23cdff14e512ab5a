"""What a tumour-board figure says, decided without Qt: title lines, tile captions, chart points,
change-metric rows, provenance, disclaimer, and the file metadata — optionally de-identified.

The Qt layer (`mamview.qt.export`) only draws an `ExportContent`; every string it draws comes
from here (plus the chart's numeric axes and fixed legend), so a test can check that a
de-identified figure carries no name, ID or birth date by reading `ExportContent.drawn_text()`.

De-identification: the name, PatientID and birth date are replaced by a pseudonym and an age in
years (capped at "90+", as HIPAA Safe Harbor does); every date becomes years relative to the
woman's latest exam; exam keys, accession numbers and SOP UIDs are never written. A last scrub
pass removes any identifier that reached a string by another route (e.g. a metric note).

Burned-in annotation: text written into the pixels (a name, ID or birth date) cannot be scrubbed,
so a de-identified figure withholds the pixels of every image that has, or may have, such text
(see `withholds_pixels`); the tile says so and the footer counts the images withheld.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass, field

from mamview import __version__
from mamview.core import hanging, reference
from mamview.core.domain import (STANDARD_VIEWS, ScoreState, domain_label, join_domain,
                                 risk_percent, view_label)
from mamview.core.hanging import Cell, Hanging

_log = logging.getLogger(__name__)
SCORED, PENDING, UNSCORABLE = ScoreState.CURRENT, ScoreState.PENDING, ScoreState.UNSCORABLE
DISCLAIMER = ("This score is not a diagnosis. It estimates 5-year breast-cancer risk from the "
              "images alone and must be read with the radiologist's interpretation.")
METRICS_HEADING = "Change metrics — research use, not validated"
STANDARD_LABELS = tuple(view_label(s.value, v.value) for s, v in STANDARD_VIEWS)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_REMOVED = "[removed]"
WITHHELD_NOTE = "image withheld: burned-in annotation"
# Secondary Capture and its multi-frame classes (…1.7.1 – …1.7.4): screenshots and digitised
# films, where burned-in text is the rule rather than the exception
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_DEFLATED = "1.2.840.10008.1.2.1.99"
# the header part of a file read for the flag: enough for any real header (the flag sits just
# before the pixels), and a bound on what a hostile file can make us read
_HEADER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ExportPoint:
    """One exam on the exported chart. `exam_date` is None when the content is de-identified."""

    label: str  # safe to draw: 'exam 3 of 6'
    exam_date: datetime.date | None
    years_from_latest: float  # ≤ 0
    state: ScoreState  # CURRENT (drawn) | PENDING | STALE (waits, recomputing) | UNSCORABLE
    risk_percent: float | None = None
    yearly_percent: tuple[float, ...] = ()
    reason: str | None = None
    domain: str = ""  # a score computed on request from images outside the validated domain


@dataclass(frozen=True)
class TileCaption:
    """One tile of the hanging: `tile_key` ('<exam_key>|RCC') matches the tile image handed in by
    the window and is never drawn or written; `caption` is what the figure shows."""

    tile_key: str  # '' for a cell with no exam (8-up without a prior); see `tile_key()`
    caption: str
    exam_index: int  # index into ExportContent.chart_points
    withheld: bool = False  # pixels must not be drawn: burned-in annotation (de-identified only)
    cell: Cell | None = None  # where it hangs and which edge its chest wall is against
    message: str = ""  # an empty cell's words, as on screen ('no prior exam', 'no RCC in …')
    domain: str = ""  # the image is outside the model's validated domain ('' = inside)


@dataclass(frozen=True)
class ExportContent:
    """Everything a tumour-board figure shows and writes, ready to draw."""

    title_lines: tuple[str, ...]
    tiles: tuple[TileCaption, ...]  # in the order of hanging.cells
    grid: tuple[int, int]  # rows, columns of the tile area
    chart_points: tuple[ExportPoint, ...]
    current_index: int | None  # into chart_points
    prior_index: int | None
    relative_years: bool  # draw x as years relative to the latest exam
    model_name: str
    model_label: str  # DEMO_LABEL for the demo model
    is_demo: bool
    model_line: str
    thresholds: tuple[float, ...]
    metrics_heading: str
    metrics_rows: tuple[tuple[str, str], ...]
    flags: tuple[str, ...]
    provenance: tuple[str, ...]
    disclaimer: str
    deidentified: bool
    metadata: dict[str, str] = field(default_factory=dict)  # PNG text chunks / PDF info
    hanging: Hanging | None = None  # the plan the tiles follow: the screen's (core.hanging)

    @property
    def withheld_count(self) -> int:
        """How many tiles are drawn blank because of burned-in annotation."""
        return sum(1 for t in self.tiles if t.withheld)

    @property
    def withheld_line(self) -> str:
        """The footer's note on withheld images ('' when none is)."""
        n = self.withheld_count
        if not n:
            return ""
        return f"{n} image{'s' if n > 1 else ''} withheld: burned-in annotation"

    def drawn_text(self) -> list[str]:
        """Every string the figure draws or writes (besides numeric chart axes and the legend)."""
        out = list(self.title_lines) + [t.caption for t in self.tiles]
        out += [t.message for t in self.tiles]
        out += [WITHHELD_NOTE for t in self.tiles if t.withheld] + [self.withheld_line]
        out += [p.label for p in self.chart_points] + [p.reason or "" for p in self.chart_points]
        out += [self.model_line, self.model_name, self.model_label, self.metrics_heading]
        out += [f"{a}: {b}" for a, b in self.metrics_rows] + list(self.flags)
        out += list(self.provenance) + [self.disclaimer]
        out += [f"{k}: {v}" for k, v in self.metadata.items()]
        return [s for s in out if s]


# ---------------------------------------------------------------------------- helpers


def parse_date(text: str) -> datetime.date | None:
    """'2024-01-31' or '20240131' → date; anything else → None."""
    t = (text or "").strip()
    try:
        if len(t) == 8 and t.isdigit():
            return datetime.date(int(t[:4]), int(t[4:6]), int(t[6:]))
        return datetime.date.fromisoformat(t) if t else None
    except ValueError:
        return None


def years_between(d: datetime.date, anchor: datetime.date) -> float:
    """(d − anchor) in years (negative before the anchor)."""
    return (d - anchor).days / 365.25


def format_relative_years(years: float) -> str:
    """'latest exam' for 0, else e.g. '−2.0 y' (years relative to the latest exam)."""
    if abs(years) < 0.05:
        return "latest exam"
    return f"{years:+.1f} y".replace("-", "−")


def format_name(dicom_name: str) -> str:
    """'DOE^JANE^^^' → 'DOE, JANE' (as radiology lists show names)."""
    parts = [p.strip() for p in (dicom_name or "").split("^")]
    family, given = (parts + ["", ""])[:2]
    return ", ".join(p for p in (family, given) if p) or "(no name)"


def age_years(birth: datetime.date | None, on: datetime.date | None) -> str:
    """Completed years on a date; '90+' above 89 (Safe Harbor); '' when unknown."""
    if birth is None or on is None or on < birth:
        return ""
    age = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return "90+" if age > 89 else str(age)


_PSEUDONYM_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # 32 letters: no 0/O, 1/I
_SECRET_BYTES = 32


def new_pseudonym() -> str:
    """A random case label, not derived from any identifier (so it cannot be reversed)."""
    return "Case " + "".join(secrets.choice(_PSEUDONYM_ALPHABET) for _ in range(5))


def library_secret(lib) -> bytes:
    """The library's pseudonym secret: 32 random bytes in `lib.pseudonym_key`, created once
    (mode 600, never through a link). A file of the wrong size is replaced by a new secret,
    which changes every pseudonym of that library (logged). Raises OSError."""
    path = lib.pseudonym_key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDONLY | nofollow)
        except FileNotFoundError:
            pass
        else:
            with os.fdopen(fd, "rb") as f:
                data = f.read(_SECRET_BYTES + 1)
            if len(data) == _SECRET_BYTES:
                return data
            _log.warning("%s is not a pseudonym secret (%d bytes): making a new one, so "
                         "export pseudonyms of this library change", path, len(data))
            os.unlink(path)
        try:  # O_EXCL: two exports at once agree on the first secret written
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            secret = secrets.token_bytes(_SECRET_BYTES)
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        return secret
    raise OSError(f"could not read or create the pseudonym secret {path}")


def stable_pseudonym(lib, patient_key: str) -> str:
    """'Case XXXXXX': the same for one woman every time within one library (her PNG and PDF
    carry the same case ID), different in another library. An HMAC-SHA256 of her patient key
    under the library's secret, so it reveals nothing about her ID without the secret."""
    digest = hmac.new(library_secret(lib), patient_key.encode("utf-8"), hashlib.sha256).digest()
    number = int.from_bytes(digest[:8], "big")
    letters = []
    for _ in range(6):  # 30 bits: collisions stay rare in a library of thousands of women
        number, k = divmod(number, len(_PSEUDONYM_ALPHABET))
        letters.append(_PSEUDONYM_ALPHABET[k])
    return "Case " + "".join(letters)


def identifier_strings(patient: dict, common_words: str = "") -> list[str]:
    """The strings a de-identified figure must not contain: name (whole and parts ≥ 3
    letters), PatientID, issuer|ID key, birth date in DICOM and ISO form.

    A name part that is also a word of `common_words` (the model's name and label, which the
    figure prints anyway) is left out, so a woman called 'Demo' does not erase 'demo model'.
    """
    words = {w.lower() for w in re.findall(r"[A-Za-z0-9]+", common_words)}
    out = []
    name = (patient.get("name") or "").strip()
    if name:
        out.append(name)
        out.append(format_name(name))
        out += [p for p in re.split(r"[\^\s,]+", name) if len(p) >= 3 and p.lower() not in words]
    for key in ("patient_id", "patient_key"):
        v = (patient.get(key) or "").strip()
        if v:
            out.append(v)
    birth = parse_date(patient.get("birth_date") or "")
    if birth:
        out += [birth.strftime("%Y%m%d"), birth.isoformat(), birth.strftime("%d.%m.%Y"),
                birth.strftime("%m/%d/%Y")]
    return sorted(set(out), key=len, reverse=True)


def scrub(text: str, identifiers: list[str], anchor: datetime.date | None) -> str:
    """Dates → years relative to `anchor`; identifiers → '[removed]' (case-insensitive).

    Single words (name parts) are matched as whole words, so 'Ann' does not eat 'annual';
    anything with a digit or separator (IDs, dates, whole names) wherever it occurs.
    """
    if anchor is not None:
        def rel(m: re.Match) -> str:
            d = parse_date(m.group(0))
            return format_relative_years(years_between(d, anchor)) if d else _REMOVED
        text = _ISO_DATE.sub(rel, text)
    for ident in identifiers:
        pattern = re.escape(ident)
        if ident.isalpha():
            pattern = rf"(?<![^\W\d_]){pattern}(?![^\W\d_])"
        text = re.sub(pattern, _REMOVED, text, flags=re.IGNORECASE)
    return text


# ---------------------------------------------------------------- burned-in annotation


def withholds_pixels(flag: str | None, sop_class_uid: str | None) -> bool:
    """Whether a de-identified figure must withhold an image's pixels.

    `flag` is BurnedInAnnotation ('YES', 'NO', or ''/None when absent or unreadable);
    `sop_class_uid` is None when it could not be learnt. Anything but a clear 'NO' counts as
    'YES' when stated. An unknown flag withholds on Secondary Capture (screenshots, digitised
    films) and when the SOP class is unknown too, but not on a known mammography class: there
    the attribute is Type 1 (DX / MG image modules), modalities keep annotations in overlays
    or presentation states, and a missing flag is a converter's slip, not a sign of text in the
    pixels; blanking every such image would make figures of converted archives useless.
    """
    value = (flag or "").strip().upper()
    if value:
        return value != "NO"
    if sop_class_uid is None:
        return True
    uid = sop_class_uid.strip()
    return uid == SECONDARY_CAPTURE or uid.startswith(SECONDARY_CAPTURE + ".")


def header_burned_in(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(BurnedInAnnotation, SOP Class UID) read from a file's header; None for each value that
    could not be read. Never raises for a bad file; reads only a regular file, at most a few MB,
    and never inflates a deflated dataset (its flag counts as unknown)."""
    try:
        head = _read_head(path)
    except (OSError, ValueError, TypeError):
        return None, None
    if head is None:
        return None, None
    try:
        return _parse_burned_in(head)
    except Exception:  # pydicom raises many types for damaged headers
        return None, None


def _read_head(path) -> bytes | None:
    # O_NONBLOCK: opening a FIFO put in the image's place must not hang the export
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(_HEADER_BYTES)
    finally:
        os.close(fd)


def _parse_burned_in(head: bytes) -> tuple[str | None, str | None]:
    from pydicom import dcmread
    from pydicom.filereader import read_dataset, read_preamble

    buf = io.BytesIO(head)
    read_preamble(buf, True)
    # file meta (always explicit VR little endian) first: pydicom would inflate a deflated
    # dataset whole, without a bound
    meta = read_dataset(buf, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    if str(meta.get("TransferSyntaxUID", "")) == _DEFLATED:
        return None, str(meta.get("MediaStorageSOPClassUID", "")).strip() or None
    buf.seek(0)
    ds = dcmread(buf, force=True, stop_before_pixels=True,
                 specific_tags=["SOPClassUID", "BurnedInAnnotation"])
    uid = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "")).strip()
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip()
    return flag or None, uid or None


def image_withheld(row: dict) -> bool:
    """Whether an image (a `reads.exam_images` row) is withheld from a de-identified figure.

    The flag and SOP class come from the row when ingest stored them; an absent or empty flag
    is read from the file's header (an unreadable header counts as unknown)."""
    flag = (row.get("burned_in_annotation") or "").strip()
    sop_class = (row.get("sop_class_uid") or "").strip() or None
    if not flag and row.get("path"):
        read_flag, read_class = header_burned_in(row["path"])
        flag, sop_class = read_flag or "", sop_class or read_class
    return withholds_pixels(flag, sop_class)


def tile_withheld(images: list[dict], label: str) -> bool:
    """Whether the tile of `label` ('RCC' …) must be withheld: any present image of the exam the
    window could show there is (safe even if the window's choice among duplicates changes)."""
    return any(image_withheld(im) for im in images
               if im.get("label") == label and not im.get("missing"))


# ---------------------------------------------------------------------------- layout


def hanging_of(layout: str | Hanging, exam_keys: list[str], current_key: str | None,
               prior_key: str | None) -> Hanging:
    """The figure's hanging: the screen's own plan when the window hands it in, else the plan of
    a layout spec ('4up', '8up', 'timeline:LMLO' …) for these exams — `core.hanging` decides
    both, so the figure hangs as the screen. Raises ValueError for a plan that shows an exam
    which is not one of `exam_keys` (another woman's)."""
    if isinstance(layout, Hanging):
        strangers = {c.exam_key for c in layout.cells if c.exam_key} - set(exam_keys)
        if strangers:
            raise ValueError("the hanging shows an exam that is not this woman's")
        return layout
    return hanging.plan(layout, exam_keys, current_key, prior_key)


def tile_key(exam_key: str, view: str, image_uid: str | None = None) -> str:
    """The key that pairs a content tile with the window's image of it: '<exam_key>|RCC', and
    '|<SOP UID>' after it when the cell hangs an additional view (so a tile image of another
    view can never be drawn under this tile's caption)."""
    return f"{exam_key}|{view}" + (f"|{image_uid}" if image_uid else "")


def _placed_row(images: list[dict], cell: Cell) -> dict:
    """The image row of a cell's additional view; ValueError when it is not the exam's."""
    row = next((im for im in images if im.get("sop_instance_uid") == cell.image_uid), None)
    if row is None or row.get("missing"):
        raise ValueError("the hanging shows an image that is not this exam's")
    return row


def tile_captions(hang: Hanging, images_of: dict[str, list[dict]], index_of: dict[str, int],
                  when_text, risk_text, deidentify: bool) -> tuple[TileCaption, ...]:
    """One TileCaption per cell of the hanging, in its order: caption, chart index, withheld
    flag, and the empty cell's words as the screen says them."""
    out = []
    for cell in hang.cells:
        ek, view = cell.exam_key, cell.view
        if ek is None:
            message = hanging.empty_message(cell, ())
            out.append(TileCaption("", f"{view} · {message}", -1, cell=cell, message=message))
            continue
        images = images_of.get(ek, [])
        if cell.image_uid:  # an additional view hangs here, as on screen: caption that image
            from mamview.core.cache import reads

            row = _placed_row(images, cell)
            domain = reads.image_domain(row)
            what = (f"{view} ID · implant displaced" if cell.implant_displaced
                    else f"{cell.shows} · additional view")
            withheld, message = deidentify and image_withheld(row), ""
        else:
            domain = tile_domain(images, view)
            what = f"{view} ({cell.note})" if cell.note else view
            withheld = deidentify and tile_withheld(images, view)
            message = hanging.empty_message(cell, hanging.present_views(images))
        label = f" · {domain_label(domain)}" if domain else ""
        out.append(TileCaption(
            tile_key(ek, view, cell.image_uid), f"{what} · {when_text(ek)} · {risk_text(ek)}{label}",
            index_of.get(ek, -1), withheld=withheld, cell=cell, message=message, domain=domain))
    return tuple(out)


def tile_domain(images: list[dict], label: str) -> str:
    """Why the image the screen hangs for `label` is outside the model's validated domain
    ('' = inside): the last acquired present standard image of that view, as the window shows."""
    from mamview.core.cache import reads

    cands = [im for im in images if im.get("label") == label and im.get("is_standard")
             and not im.get("missing")]
    return reads.image_domain(max(cands, key=reads.acquisition_order)) if cands else ""


# ---------------------------------------------------------------------------- content


def _model_names(model_id: str, lib) -> tuple[str, str]:
    """(human name, label) of a model id, from the registry; the id itself if unknown."""
    from mamview.core.models import registry

    try:
        from mamview.core.paths import library
        for e in registry.list_models(lib or library()):
            if e.model_id == model_id:
                label = e.label or (registry.DEMO_LABEL if model_id == "demo" else "")
                return e.name, label
    except Exception:  # an unreadable registry must not stop an export
        pass
    return model_id, (registry.DEMO_LABEL if model_id == "demo" else "")


def build_export_content(db, patient_key: str, current_key: str | None, prior_key: str | None,
                         layout: str | Hanging = "4up", deidentify: bool = False, *,
                         model_id: str | None = None,
                         thresholds=reference.DEFAULT_THRESHOLDS_PERCENT,
                         pseudonym: str | None = None, report=None, lib=None,
                         now: datetime.datetime | None = None) -> ExportContent:
    """Read one woman's exams and scores from the cache and decide what the figure shows.

    `layout` is a spec ('4up', '8up', 'timeline:LMLO') or the screen's own `Hanging`
    (`ExamGrid.plan()`), which the figure then hangs cell for cell.
    `report` is the `TrajectoryReport` the window already shows (computed here when None).
    Raises ValueError for an unknown patient.
    """
    from mamview.core.analytics import trajectory
    from mamview.core.cache import reads
    from mamview.core.domain import STALE_REASON

    patient = reads.patient_row(db, patient_key)
    if patient is None:
        raise ValueError(f"no patient with key {patient_key!r} in the library")
    exams = [e for e in reads.list_exams(db, [patient_key])]
    dated = [(parse_date(e["exam_date"]), e) for e in exams]
    anchor = max((d for d, _ in dated if d), default=None)

    thresholds = tuple(float(t) for t in thresholds)
    keys = [e["exam_key"] for e in exams]
    # the one rule of core.cache.reads (the window passes its model id); without a library
    # to look models up in, the model that scored most of her exams
    model = reads.choose_model(lib, model_id, db) if lib is not None else (
        model_id or reads.model_with_most_scores(db, keys))
    model_id = getattr(model, "model_id", model)
    points = trajectory.points_for_patient(db, patient_key, model) if model else []
    if report is None:
        report = trajectory.analyze(points, trajectory.FlagRules(thresholds_percent=thresholds))
    evaluated = reads.evaluate(db, keys, model) if model else {}
    # provenance names only what produced the scores shown: current ones
    score_rows = {ek: row for ek, (s, row) in evaluated.items()
                  if row is not None and s.state == ScoreState.CURRENT}

    # chart points, oldest first; an exam without a date cannot be placed on a time axis
    chart: list[ExportPoint] = []
    index_of: dict[str, int] = {}
    placed = [(d, e) for d, e in dated if d]
    for i, (d, e) in enumerate(placed):
        s = evaluated[e["exam_key"]][0] if e["exam_key"] in evaluated else None
        rel = years_between(d, anchor)
        when = format_relative_years(rel) if deidentify else d.isoformat()
        label = f"exam {i + 1} of {len(placed)} ({when})"
        shown_date = None if deidentify else d
        if s is not None and s.state == ScoreState.CURRENT and len(s.risk) >= 5:
            yearly = risk_percent(s.risk)
            pt = ExportPoint(label, shown_date, rel, SCORED, yearly[4], yearly,
                             domain=s.domain)
        elif s is not None and s.state == ScoreState.UNSCORABLE:
            pt = ExportPoint(label, shown_date, rel, UNSCORABLE, reason=s.reason or "not scorable")
        elif s is None and not e["complete"]:
            pt = ExportPoint(label, shown_date, rel, UNSCORABLE, reason=e["incomplete_reason"])
        else:  # stale scores are drawn as pending, never with their old number
            stale = s is not None and s.state == ScoreState.STALE
            pt = ExportPoint(label, shown_date, rel, ScoreState.STALE if stale else PENDING,
                             reason=STALE_REASON if stale
                             else "not scored yet")
        index_of[e["exam_key"]] = i
        chart.append(pt)

    def when_text(exam_key: str | None) -> str:
        if exam_key not in index_of:
            return "—"
        p = chart[index_of[exam_key]]
        return format_relative_years(p.years_from_latest) if deidentify else p.exam_date.isoformat()

    def risk_text(exam_key: str) -> str:
        p = chart[index_of[exam_key]] if exam_key in index_of else None
        if p is not None and p.state == ScoreState.STALE:
            return "recomputing"
        if p is None or p.state != SCORED:
            return "not scored" if p is None or p.state == PENDING else "not scorable"
        return f"5-yr {p.risk_percent:.1f}%"

    hang = hanging_of(layout, [e["exam_key"] for e in exams], current_key, prior_key)
    current_key, prior_key = hang.current_key, hang.prior_key
    images_of = {e["exam_key"]: e.get("images") or [] for e in exams}
    tiles = tile_captions(hang, images_of, index_of, when_text, risk_text, deidentify)

    model_name, model_label = _model_names(model_id, lib) if model_id else ("no model", "")
    is_demo = model_id == "demo"
    model_line = f"Model: {model_name}" + (f" — {model_label}" if model_label else "")

    # title
    birth = parse_date(patient.get("birth_date") or "")
    if deidentify:
        who = pseudonym or new_pseudonym()
        age = age_years(birth, anchor)
        first = f"{who} (de-identified)" + (f" · age {age} at latest exam" if age else "")
        second = (f"Current exam: {when_text(current_key)} · prior: {when_text(prior_key)} · "
                  "dates shown as years relative to the latest exam")
    else:
        who = format_name(patient.get("name", ""))
        first = f"{who} · ID {patient.get('patient_id', '')}" + (
            f" · born {birth.isoformat()}" if birth else "")
        second = f"Current exam: {when_text(current_key)} · prior: {when_text(prior_key)}"
    title = ("Serial screening mammograms and image-based 5-year risk", first, second)

    # metrics
    metric_rows = tuple((str(a), str(b)) for a, b in report.display_rows()) if report else ()
    flags = tuple(str(f) for f in getattr(report, "flags", ()) or ())

    # provenance of the scores drawn
    provenance = _provenance(score_rows, model_id, model_name, now, deidentify)

    ids = identifier_strings(patient, f"{model_id} {model_name} {model_label}") \
        if deidentify else []
    meta = {
        "Title": f"mamview risk trajectory — {who}",
        "Software": f"mamview {__version__}",
        "Model": model_line,
        "Disclaimer": DISCLAIMER,
        "Provenance": " | ".join(provenance),
        "Deidentified": "yes" if deidentify else "no",
    }
    if not deidentify:
        meta["Patient"] = f"{who} (ID {patient.get('patient_id', '')})"
    withheld = sum(1 for t in tiles if t.withheld)
    if withheld:
        meta["Withheld"] = f"{withheld} image(s): burned-in annotation"

    content = ExportContent(
        title_lines=title, tiles=tiles, grid=(hang.rows, hang.columns),
        chart_points=tuple(chart),
        current_index=index_of.get(current_key), prior_index=index_of.get(prior_key),
        relative_years=deidentify, model_name=model_name, model_label=model_label,
        is_demo=is_demo, model_line=model_line, thresholds=thresholds,
        metrics_heading=METRICS_HEADING, metrics_rows=metric_rows, flags=flags,
        provenance=provenance, disclaimer=DISCLAIMER, deidentified=deidentify, metadata=meta,
        hanging=hang)
    return _scrubbed(content, ids, anchor) if deidentify else content


def _provenance(score_rows: dict, model_id: str | None, model_name: str,
                now: datetime.datetime | None, deidentify: bool = False) -> tuple[str, ...]:
    """Lines naming exactly what produced the scores: weights, calibrator, preprocessing.

    De-identified, no calendar date is printed: the compute times become days before the
    export, and the export's own date is left out (a date narrows down who was screened)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ok = [s for s in score_rows.values() if s["status"] == "ok"]
    lines = []
    if not ok:
        lines.append(f"No scores from {model_name} for this woman yet.")
    else:
        def distinct(key: str) -> str:
            return ", ".join(sorted({str(s.get(key) or "—") for s in ok}))
        lines.append(f"{model_name} (id {model_id}, version {distinct('model_version')}, "
                     f"weights sha256 {', '.join(sorted({s['weights_sha256'][:12] for s in ok}))}…)")
        lines.append(f"Calibrator {distinct('calibrator')}; preprocessing "
                     f"{distinct('preprocessing_version')}; device {distinct('device')}")
        computed = sorted(s["computed_at"][:10] for s in ok)
        if deidentify:
            when = _days_before(computed, now)
        else:
            when = (f"computed {computed[0]}"
                    + (f" to {computed[-1]}" if computed[-1] != computed[0] else ""))
        lines.append(f"{len(ok)} exam score(s), {when}"
                     + "; input SOP instance UIDs are recorded in the library's scores table")
        outside = [s for s in ok if s.get("domain")]
        if outside:
            kinds = join_domain(s["domain"] for s in outside)
            lines.append(f"{len(outside)} score(s) from images outside the model's validated "
                         f"domain ({kinds}), computed on request")
        mapped = sorted({s["view_mapping"] for s in ok if s.get("view_mapping")})
        if mapped:
            lines.append("Views used for others, as the model's own code does: "
                         + "; ".join(mapped))
    if deidentify:
        lines.append(f"Exported by mamview {__version__} (export date left out: de-identified)")
    else:
        lines.append(f"Exported {now.strftime('%Y-%m-%d %H:%M UTC')} by mamview {__version__}")
    return tuple(lines)


def _days_before(iso_days: list[str], now: datetime.datetime) -> str:
    """'computed 0–3 days before export' from sorted ISO dates ('' dates: 'compute time
    unknown')."""
    days = []
    for text in iso_days:
        d = parse_date(text)
        if d is not None:
            days.append(max((now.date() - d).days, 0))
    if not days:
        return "compute time unknown"
    lo, hi = min(days), max(days)
    unit = "day" if hi == 1 else "days"
    return (f"computed {lo} {unit} before export" if lo == hi
            else f"computed {lo}–{hi} {unit} before export")


def _scrubbed(c: ExportContent, ids: list[str], anchor) -> ExportContent:
    """A copy of the content in which no identifier or calendar date of an exam survives."""
    from dataclasses import replace

    s = lambda t: scrub(t, ids, anchor)  # noqa: E731
    return replace(
        c,
        title_lines=tuple(s(t) for t in c.title_lines),
        tiles=tuple(replace(t, caption=s(t.caption), message=s(t.message)) for t in c.tiles),
        chart_points=tuple(replace(p, label=s(p.label), reason=s(p.reason) if p.reason else None)
                           for p in c.chart_points),
        metrics_rows=tuple((s(a), s(b)) for a, b in c.metrics_rows),
        flags=tuple(s(f) for f in c.flags),
        # provenance and metadata carry model facts and, de-identified, no calendar date
        # (_provenance words the compute time relatively); identifiers are still scrubbed
        provenance=tuple(scrub(t, ids, None) for t in c.provenance),
        metadata={k: scrub(v, ids, None) for k, v in c.metadata.items()},
    )
