"""Attack campaign for issue 11: a few hundred hostile inputs, each imported through the real CLI
in its own process under `/usr/bin/time -v` with a timeout, then `mamview score` on imported
bad exams. Prints the closing note's table:

    bad inputs tried / crashes (signal or traceback) / hangs (timeout) / writes outside the
    library / peak RSS (max)

followed by every failure with its kind and a one-command reproduction.

    python tools/attack_campaign.py [--seed 1] [--count 300] [--timeout 60] [--work DIR]
    python tools/attack_campaign.py --seed 1 --only stream-flip-rle-123456   # one case, kept

The inputs come from the builders of `tests/attack/test_import_fuzz.py` (same seed, same files);
each case gets its own library, and afterwards a good image must import into it and preview,
and every bad input must be listed by `mamview problems` (those follow-up commands run for a
batch of cases in one process, to save start-up time). Children run under a 12 GiB address-space
cap so that a runaway decoder cannot take a shared machine down. Not a test: it lives outside
`tests/` so pytest never collects it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME = "/usr/bin/time"
PEAK_RSS_TARGET = 2 * 1024**3


@dataclass
class Run:
    """One command under /usr/bin/time -v."""

    status: int | None  # exit status; None when killed by a signal or the timeout
    signal: int | None
    timed_out: bool
    peak_rss: int  # bytes
    seconds: float
    stdout: str
    stderr: str


@dataclass
class Outcome:
    """Everything found about one case."""

    case_id: str
    files: int = 0
    crash: str = ""
    hang: bool = False
    outside: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    peak_rss: int = 0
    seconds: float = 0.0
    repro: str = ""
    poisoned: bool = False  # a later good import into its library failed


GUARD_BYTES = 12 * 1024**3
# sets an address-space cap, then becomes /usr/bin/time: a runaway child cannot take the shared
# machine down (a preexec_fn would do the same, but is unsafe in a process with threads)
GUARDED_EXEC = ("import os, resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_AS, ({GUARD_BYTES}, {GUARD_BYTES})); "
                "os.execv(sys.argv[1], sys.argv[1:])")


def timed(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> Run:
    """Run argv under `/usr/bin/time -v` in its own process group; a timeout kills the group."""
    with tempfile.TemporaryDirectory(prefix="mamview-campaign-") as tmp:
        report, out, err = Path(tmp, "time"), Path(tmp, "out"), Path(tmp, "err")
        t0 = time.perf_counter()
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen([sys.executable, "-c", GUARDED_EXEC, TIME, "-v", "-o",
                                     str(report), *argv], cwd=cwd, env=env, stdout=fo, stderr=fe,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        seconds = time.perf_counter() - t0
        text = report.read_text(errors="replace") if report.exists() else ""
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        sig = re.search(r"Command terminated by signal (\d+)", text)
        status = re.search(r"Exit status: (\d+)", text)
        return Run(
            status=None if (timed_out or sig) else int(status.group(1)) if status else proc.returncode,
            signal=int(sig.group(1)) if sig else None, timed_out=timed_out,
            peak_rss=int(rss.group(1)) * 1024 if rss else 0, seconds=seconds,
            stdout=out.read_text(errors="replace"), stderr=err.read_text(errors="replace"))


def crash_of(run: Run) -> str:
    """'' when the command ended as a program should; otherwise what went wrong."""
    if run.signal:
        return f"killed by signal {run.signal}: {run.stderr.strip()[-200:]}"
    if "Traceback (most recent call last)" in run.stderr:
        return "traceback: " + run.stderr.strip().splitlines()[-1][:200]
    internal = [line for line in run.stderr.splitlines() if line.startswith("mamview: internal error")]
    if internal:  # an exception that reached the top-level handler: a bug, by the CLI's own word
        return internal[0][:200]
    if run.status not in (0, 1, 2, None):
        return f"exit status {run.status}: {run.stderr.strip()[-200:]}"
    if run.status and not any(line.startswith("mamview") for line in run.stderr.splitlines()):
        return f"exit status {run.status} without a `mamview:` message"
    return ""


# ---------------------------------------------------------------- cases


def campaign_cases(fuzz, seed: int, count: int) -> list:
    """The test suite's fixed attacks once, then seeded flips and truncations up to `count`."""
    fixed = fuzz.build_cases(seed, flips=0, stream_groups=0, heavy=True)
    rng = random.Random(seed)
    extra = []
    kinds = ("native", "rle", "j2k")
    places = ("preamble", "meta", "header", "pixel-tag", "pixel-start", "pixel-mid", "last-frame-byte")
    while len(fixed) + len(extra) < count:
        pick = rng.random()
        kind = rng.choice(kinds)
        if pick < 0.5:
            extra.append(fuzz.header_flips(kind, rng.randrange(10**7)))
        elif pick < 0.8 and kind != "native":
            extra.append(fuzz.stream_flips(kind, rng.randrange(10**7), files=1))
        else:
            case = fuzz.truncation(kind, rng.choice(places), rng.randrange(10**7))
            case.id += f"-{rng.randrange(10**6)}"
            extra.append(case)
    cases, seen = [], set()
    for case in fixed + extra:
        while case.id in seen:
            case.id += "+"
        seen.add(case.id)
        cases.append(case)
    return cases


# ---------------------------------------------------------------- running


class Campaign:
    """Runs cases in batches (each case in its own library); collects one Outcome per case."""

    def __init__(self, fuzz, args):
        self.fuzz, self.args = fuzz, args
        self.work = Path(args.work)
        self.env = {**os.environ, "PYTHONPATH": str(Path(args.repo).resolve())}
        self.env.pop("MAMVIEW_HOME", None)
        self.python = sys.executable
        self.outcomes: list[Outcome] = []
        self.score_results: list[tuple[str, Outcome]] = []

    def mamview(self, lib: Path, *argv: str) -> list[str]:
        return [self.python, "-m", "mamview", "--home", str(lib), *argv]

    def repro(self, case_id: str) -> str:
        return (f"python tools/attack_campaign.py --seed {self.args.seed} --count "
                f"{self.args.count} --only {case_id}")

    def run_batch(self, batch: list[tuple[int, object]], number: int) -> None:
        """Each case of the batch in its own library: the bad import under time -v, then the
        follow-up commands of all of them in one child (see `check`)."""
        fuzz = self.fuzz
        done = []
        for index, case in batch:
            out = Outcome(case.id, repro=self.repro(case.id))
            self.outcomes.append(out)
            try:
                layout, ctx, built, good_uid = fuzz.prepare(case, self.work / f"zq{index:03d}q", index)
            except Exception as exc:  # noqa: BLE001 - a generator bug must not end the campaign
                out.other.append(f"could not build the input: {type(exc).__name__}: {exc}")
                continue
            out.files = len(built.bad) + len(built.maybe) + len(built.imported) or 1
            before = fuzz.tree(layout.root, layout.lib)
            argv = self.mamview(layout.lib, "import", "--json", *built.args)
            if self.args.only:
                print("running: " + " ".join(map(repr, argv)), file=sys.stderr)
            run = timed(argv, cwd=layout.cwd, env={**self.env, **built.env}, timeout=self.args.timeout)
            out.peak_rss, out.seconds, out.hang, out.crash = run.peak_rss, run.seconds, run.timed_out, crash_of(run)
            if built.nonzero and run.status == 0:
                out.other.append("import exited 0 although its input cannot be imported")
            if run.peak_rss > PEAK_RSS_TARGET:
                out.other.append(f"peak RSS {run.peak_rss / 2**30:.2f} GiB")
            done.append((out, built, layout, good_uid, ctx.token, before))
        self.check(done, number)
        # after the follow-up too: a later import may still write what an earlier one left
        for out, _, layout, _, token, before in done:
            out.outside = fuzz.tree_changes(before, fuzz.tree(layout.root, layout.lib))
            for leftover in fuzz.temp_leftovers(token):
                out.outside.append(f"created {leftover}")
                with contextlib.suppress(OSError):
                    os.unlink(leftover)

    def check(self, done: list, number: int) -> None:
        """The follow-up commands of every case (its problems listed, a good image imports and
        previews into its library, nothing raw printed) in one child; a child that dies is
        replaced and the case it died on is marked."""
        fuzz = self.fuzz
        names = fuzz.STEP_NAMES[1:]
        todo = list(done)
        attempt = 0
        while todo:
            attempt += 1
            commands = [c for _, built, layout, *_ in todo
                        for c in fuzz.command_lines(layout.lib, built, layout.good_dir)[1:]]
            child = fuzz.run_in_child(commands, self.work, {},
                                      self.work / f"check-{number}-{attempt}",
                                      timeout=self.args.timeout * 2 + 5 * len(todo))
            finished = len(child.steps) // len(names)
            for k, (out, built, _, good_uid, *_) in enumerate(todo[:finished]):
                steps = dict(zip(names, child.steps[k * len(names):(k + 1) * len(names)]))
                v = fuzz.outcome_violations(built, {"import": None, **steps}, good_uid)
                for name, step in steps.items():
                    v += fuzz.step_violations(step, name)
                out.unrecorded += [x for x in v if "not listed" in x or "neither imported" in x]
                out.other += [x for x in v if x not in out.unrecorded]
            if finished < len(todo):
                out = todo[finished][0]
                out.other.append(f"follow-up commands died (status {child.status}, timed out "
                                 f"{child.timed_out}) in `{names[len(child.steps) % len(names)]}`: "
                                 f"{child.output.strip()[-200:]}")
                out.poisoned = True
                todo = todo[finished + 1:]
            else:
                todo = []
        for out, *_ in done:
            out.poisoned = out.poisoned or any("good import" in x or "good image" in x for x in out.other)

    def _batch_or_note(self, numbered) -> int:
        """run_batch, with a bug in the campaign itself noted instead of ending the run."""
        number, batch = numbered
        try:
            self.run_batch(batch, number)
        except Exception as exc:  # noqa: BLE001
            note = Outcome(f"batch-{number}", other=[f"campaign error: {type(exc).__name__}: {exc}"])
            self.outcomes.append(note)
        return len(batch)

    def run_imports(self, cases: list) -> None:
        # the index names the token (and so the UIDs): keep the full run's for --only
        indexed = [(i, c) for i, c in enumerate(cases) if not self.args.only or c.id == self.args.only]
        size = self.args.batch
        batches = [indexed[start:start + size] for start in range(0, len(indexed), size)]
        done = 0
        # batches are independent (own folder, library and tokens): run a few side by side
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            for n in pool.map(self._batch_or_note, enumerate(batches)):
                done += n
                print(f"\r{done}/{len(indexed)} inputs", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)

    # ------------------------------------------------------------ score

    def score_cases(self) -> list[tuple[str, str, object]]:
        """(id, expectation, writer of the odd view) for exams with one bad view of four."""
        fuzz, hostile = self.fuzz, self.fuzz.hostile

        header = fuzz._edited

        def oversized_rle(path, **kw):
            src = hostile.rle_mammogram(Path(str(path) + ".src"), **kw)
            out = hostile.replace_frame(src, path, hostile.first_frame(src), Rows=65535, Columns=65535)
            src.unlink()
            return out

        return [
            ("score-good-exam", "scored", hostile.write_mammogram),
            ("score-one-pixel-view", "not scored", header(Rows=fuzz._one_pixel)),
            ("score-16-pixel-view", "not scored", header(Rows=fuzz._tiny)),
            ("score-nan-slope-view", "not scored", header(RescaleSlope="NaN")),
            ("score-constant-view", "not scored", header(PixelData=fuzz._constant_pixels)),
            ("score-panicking-rle-view", "not scored", lambda p, **kw: hostile.panicking_rle(p, **kw)),
            ("score-oversized-rle-view", "not scored", oversized_rle),
        ]

    def run_scores(self) -> None:
        from pydicom.uid import generate_uid

        views = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]
        for case_id, expect, writer in self.score_cases():
            if self.args.only and self.args.only != case_id:
                continue
            base = self.work / case_id
            layout = self.fuzz.Layout.under(base)
            study = generate_uid()
            folder = layout.root / "in" / case_id
            for i, (lat, view) in enumerate(views):
                kw = dict(laterality=lat, view=view, study_uid=study, patient_id="SCORE1",
                          shape=self.fuzz.SCORE_SHAPE)
                path = folder / f"{lat}{view}.dcm"
                if i == 0 and expect != "scored":
                    writer(path, **kw)
                else:
                    self.fuzz.hostile.write_mammogram(path, **kw)
            out = Outcome(case_id, files=4, repro=self.repro(case_id))
            before = self.fuzz.tree(layout.root, layout.lib)
            imp = timed(self.mamview(layout.lib, "import", str(folder)), cwd=layout.cwd,
                        env=self.env, timeout=self.args.timeout)
            run = timed(self.mamview(layout.lib, "score"), cwd=layout.cwd, env=self.env,
                        timeout=self.args.score_timeout)
            out.peak_rss = max(imp.peak_rss, run.peak_rss)
            out.seconds = imp.seconds + run.seconds
            out.hang = imp.timed_out or run.timed_out
            out.crash = crash_of(imp) or crash_of(run)
            out.outside = self.fuzz.tree_changes(before, self.fuzz.tree(layout.root, layout.lib))
            scored = re.search(r"Scored (\d+) exams \((\d+) computed", run.stdout)
            computed = int(scored.group(2)) if scored else None
            if not out.hang and not out.crash:
                if expect == "scored" and computed != 1:
                    out.other.append(f"the good exam was not scored: {run.stdout.strip()[-300:]}")
                if expect == "not scored" and computed:
                    out.other.append("an exam with a bad view was scored as if it were a mammogram")
            self.outcomes.append(out)
            self.score_results.append((case_id, out))
            print(f"{case_id}: {run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr.strip()[-200:]}",
                  file=sys.stderr)


# ---------------------------------------------------------------- report


# which helper's area a failure belongs to, by case id (issue 11's split of the work)
AREAS = (
    (("uid-", "name-", "dicomdir-", "special-", "path-not-found"), "A (library, import, media)"),
    (("escape-sequences",), "C (CLI output)"),
    (("",), "B (guarded decode, limits, plausibility)"),
)


def area(case_id: str) -> str:
    return next(name for prefixes, name in AREAS if case_id.startswith(prefixes))


def failed(o: Outcome) -> bool:
    return bool(o.crash or o.hang or o.outside or o.unrecorded or o.other)


def table(outcomes: list[Outcome]) -> dict:
    return {
        "bad inputs tried": len(outcomes),
        "files": sum(o.files for o in outcomes),
        "crashes (signal or traceback)": sum(bool(o.crash) for o in outcomes),
        "hangs (timeout)": sum(o.hang for o in outcomes),
        "writes outside the library": sum(bool(o.outside) for o in outcomes),
        "peak RSS (max)": max((o.peak_rss for o in outcomes), default=0),
        "bad inputs not in `problems`": sum(bool(o.unrecorded) for o in outcomes),
        "other failures": sum(bool(o.other) for o in outcomes),
        "libraries poisoned": sum(o.poisoned for o in outcomes),
    }


def print_report(outcomes: list[Outcome], seconds: float) -> None:
    t = table(outcomes)
    worst = max(outcomes, key=lambda o: o.peak_rss, default=None)
    print("| bad inputs tried | crashes (signal or traceback) | hangs (timeout) | "
          "writes outside the library | peak RSS (max) |")
    print("|---|---|---|---|---|")
    print(f"| {t['bad inputs tried']} ({t['files']} files) | {t['crashes (signal or traceback)']} | "
          f"{t['hangs (timeout)']} | {t['writes outside the library']} | "
          f"{t['peak RSS (max)'] / 2**20:.0f} MB ({worst.case_id if worst else '-'}) |")
    print(f"\nAlso: {t['bad inputs not in `problems`']} bad inputs not listed by `problems`; "
          f"{t['libraries poisoned']} left a library where a later good import fails; "
          f"{t['other failures']} with other failures; {seconds:.0f} s in all.")
    bad = [o for o in outcomes if failed(o)]
    if bad:
        print("\nFailures:")
    for o in bad:
        kinds = [k for k, x in (("crash", o.crash), ("hang", o.hang), ("write outside", o.outside),
                                ("not in problems", o.unrecorded), ("other", o.other)) if x]
        print(f"- {o.case_id} [{', '.join(kinds)}] area {area(o.case_id)}")
        for text in ([o.crash] if o.crash else []) + o.outside[:3] + o.unrecorded[:2] + o.other[:3]:
            print(f"    {text}")
        print(f"    reproduce: {o.repro}")


def main(argv: list[str] | None = None) -> int:
    """Build the inputs, run them through the CLI, print the table; exit 1 if anything failed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=300, help="bad inputs (cases) to try")
    p.add_argument("--timeout", type=float, default=60, help="seconds per import before a hang")
    p.add_argument("--score-timeout", type=float, default=300, help="seconds per `score` run")
    p.add_argument("--batch", type=int, default=10, help="cases whose follow-up commands share a process")
    p.add_argument("--jobs", type=int, default=2, help="batches run side by side")
    p.add_argument("--work", help="folder for inputs and libraries (default: a temporary one, "
                   "removed unless --keep or --only)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--only", metavar="CASE_ID", help="run this case alone and keep its files")
    p.add_argument("--no-score", action="store_true", help="skip `mamview score` on bad exams")
    p.add_argument("--repo", default=str(REPO), help="source tree to attack (default: this one)")
    p.add_argument("--json", metavar="FILE", help="also write the table and failures as JSON")
    args = p.parse_args(argv)

    if not Path(TIME).exists():
        p.error(f"{TIME} is missing: apt-get install time")
    sys.path.insert(0, str(Path(args.repo).resolve()))
    from tests.attack import test_import_fuzz as fuzz

    keep = args.keep or bool(args.only) or bool(args.work)
    args.work = args.work or tempfile.mkdtemp(prefix="mamview-attack-")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    campaign = Campaign(fuzz, args)
    try:
        cases = campaign_cases(fuzz, args.seed, args.count)
        if args.only:
            args.batch = 1
        campaign.run_imports(cases)
        if not args.no_score:
            campaign.run_scores()
    finally:
        if not keep:
            shutil.rmtree(args.work, ignore_errors=True)
        else:
            print(f"inputs and libraries kept in {args.work}", file=sys.stderr)
    outcomes = campaign.outcomes
    print_report(outcomes, time.perf_counter() - t0)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"table": table(outcomes), "failures": [vars(o) for o in outcomes if failed(o)]},
            indent=2, default=str))
    return 1 if any(failed(o) for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
