#!/usr/bin/env bash
# Smoke test of a built application folder, run with no Python environment at all:
#
#   packaging/smoke_test.sh dist/mamview
#
# Every command runs under `env -i` (PATH=/usr/bin:/bin, a throw-away HOME and library), so
# nothing from a venv, PYTHONPATH or the source tree can help the bundle. Checks: --version,
# the bundle's own inventory (decoders, Qt platform plugins, resources, a spawned child),
# demo-data, import, score with the demo model, the DICOM node (listen, echo, storescu when
# dcmtk is installed), and the GUI starting offscreen and exporting a figure. Prints the
# timings (first and second start of --version, time to the first window) and the folder size.
# Exit status 0 when all checks pass.
set -uo pipefail

APP_DIR="$(cd "${1:?usage: smoke_test.sh DIST_FOLDER (e.g. dist/mamview)}" && pwd)"
EXE="$APP_DIR/mamview"
[ -x "$EXE" ] || { echo "smoke_test.sh: no executable $EXE" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mamview-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/home"
FAILED=0
PATIENTS=3

# the bundle with an empty environment; QT_QPA_PLATFORM=offscreen: no display needed
app() {
    env -i PATH=/usr/bin:/bin HOME="$WORK/home" LANG=C.UTF-8 TMPDIR="$WORK" \
        MAMVIEW_HOME="$WORK/library" QT_QPA_PLATFORM=offscreen "$EXE" "$@"
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; FAILED=1; }
check() {  # check NAME COMMAND...: run, keep its output in $WORK/NAME.log, pass/fail on status
    local name="$1"; shift
    if "$@" > "$WORK/$name.log" 2>&1; then pass "$name"; else
        fail "$name (exit $?)"; sed 's/^/      /' "$WORK/$name.log" | tail -n 25; fi
}

echo "Bundle: $APP_DIR"
[ -f "$APP_DIR/BUILD-INFO.txt" ] && sed 's/^/  /' "$APP_DIR/BUILD-INFO.txt"

# --- --version, twice: the first start pays for reading the files from disk
t0=$(now); out=$(app --version 2>&1); t1=$(now)
out2=$(app --version 2>&1); t2=$(now)
VERSION_FIRST=$(secs "$t0" "$t1"); VERSION_SECOND=$(secs "$t1" "$t2")
if [[ "$out" =~ ^mamview\ [0-9] ]] && [ "$out" = "$out2" ]; then pass "--version: $out"
else fail "--version printed: $out"; fi

# --- what the bundle carries (decoders, Qt platforms, resources, torch build)
check bundle-check app --bundle-check
grep -q '"frozen": true' "$WORK/bundle-check.log" || fail "bundle-check: not running frozen"

# --- synthetic cohort (exercises the JPEG 2000 and RLE encoders too)
check demo-data app demo-data --out "$WORK/cohort" --patients "$PATIENTS" --json
if [ -f "$WORK/cohort/images.csv" ]; then
    syntaxes=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "transfer_syntax_uid") c = i; next }
                        { print $c }' "$WORK/cohort/images.csv" | sort -u | tr '\n' ' ')
    echo "      transfer syntaxes written: $syntaxes"
fi

# --- import the patient folders (headers, then previews: decodes every image)
check import app import --json "$WORK"/cohort/*/
if [ -f "$WORK/import.log" ]; then
    grep -q '"images": 0' "$WORK/import.log" && fail "import: no images in the library"
    problems=$(app problems --json 2>/dev/null | grep -c '"reason"' || true)
    [ "${problems:-0}" -eq 0 ] && pass "no problem files after import" \
        || fail "import recorded $problems problem files: $(app problems 2>&1 | head -n 5)"
fi

# --- score with the bundled demo model
check score app score --model demo
if grep -q "not for clinical use" "$WORK/score.log"; then pass "score names the demo model and its label"
else fail "score output lacks the demo model label"; fi
grep -E "^(Model|Device|Scored)" "$WORK/score.log" | sed 's/^/      /'
grep -Eq "^Scored [1-9]" "$WORK/score.log" || fail "score: no exam was scored"

# --- the headless DICOM node (what mamview-node.service runs): listen, C-ECHO it with the
# bundle itself, C-STORE one image with dcmtk's storescu when it is installed, stop on SIGTERM
PORT=$(( 20000 + RANDOM % 20000 ))
# env execs the bundle, so $! is the node's own PID (a backgrounded function would be a subshell)
env -i PATH=/usr/bin:/bin HOME="$WORK/home" LANG=C.UTF-8 TMPDIR="$WORK" MAMVIEW_HOME="$WORK/library" \
    "$EXE" listen --host 127.0.0.1 --port "$PORT" --allow-host 127.0.0.1 --no-score > "$WORK/listen.log" 2>&1 &
NODE=$!
echoed=""
for _ in $(seq 60); do
    if app echo "MAMVIEW@127.0.0.1:$PORT" --timeout 2 > "$WORK/echo.log" 2>&1; then echoed=1; break; fi
    kill -0 "$NODE" 2>/dev/null || break
    sleep 1
done
[ -n "$echoed" ] && pass "DICOM node answers C-ECHO: $(cat "$WORK/echo.log")" \
    || fail "DICOM node did not answer C-ECHO on port $PORT"
if [ -n "$echoed" ] && command -v storescu > /dev/null; then
    # an uncompressed file: storescu proposes uncompressed syntaxes by default and cannot
    # convert JPEG 2000 without a codec dcmtk does not ship
    one="$WORK/cohort/$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "path") p = i;
                                  if ($i == "transfer_syntax_uid") t = i }; next }
                                $t == "1.2.840.10008.1.2.1" { print $p; exit }' "$WORK/cohort/images.csv")"
    storescu -aec MAMVIEW 127.0.0.1 "$PORT" "$one" > "$WORK/storescu.log" 2>&1 \
        && pass "DICOM node accepted a C-STORE from dcmtk storescu" \
        || fail "storescu could not store to the node: $(tail -n 3 "$WORK/storescu.log")"
fi
kill -TERM "$NODE" 2>/dev/null
for _ in $(seq 60); do kill -0 "$NODE" 2>/dev/null || break; sleep 1; done
if kill -0 "$NODE" 2>/dev/null; then fail "DICOM node did not stop on SIGTERM"; kill -KILL "$NODE"
else pass "DICOM node stopped on SIGTERM: $(grep -a '^Received' "$WORK/listen.log" | head -n 1)"; fi

# --- the GUI, offscreen: start the main window on the library, show the first woman, export
# the tumour-board figure. `mamview gui --export-figure` when the CLI has it; else the bundle's
# own --bundle-gui-check, which drives the same MainWindow API a user's clicks do.
FIG="$WORK/figure.png"
first_patient=$(app patients --json | sed -n 's/.*"patient_id": "\([^"]*\)".*/\1/p' | head -n 1)
if app gui --help 2>&1 | grep -q -- "--export-figure"; then
    gui_cmd=(gui --patient "$first_patient" --export-figure "$FIG")
else
    gui_cmd=(--bundle-gui-check "$first_patient" "$FIG")
fi
t0=$(now)
check gui-export timeout 600 env -i PATH=/usr/bin:/bin HOME="$WORK/home" LANG=C.UTF-8 \
    TMPDIR="$WORK" MAMVIEW_HOME="$WORK/library" QT_QPA_PLATFORM=offscreen "$EXE" "${gui_cmd[@]}"
t1=$(now)
GUI_SECONDS=$(secs "$t0" "$t1")
if [ -s "$FIG" ] && [ "$(head -c 8 "$FIG" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
    pass "GUI (${gui_cmd[0]}) exported a PNG figure of $first_patient ($(stat -c %s "$FIG") bytes)"
    if [ -n "${SMOKE_KEEP_FIGURE:-}" ]; then cp "$FIG" "$SMOKE_KEEP_FIGURE"; fi
else
    fail "GUI did not write a PNG figure (${gui_cmd[*]})"
fi
FIRST_WINDOW=$(sed -n 's/.*"first_window_s": \([0-9.]*\).*/\1/p' "$WORK/gui-export.log" | head -n 1)
FIRST_WINDOW_CPU=$(sed -n 's/.*"first_window_cpu_s": \([0-9.]*\).*/\1/p' "$WORK/gui-export.log" | head -n 1)
grep -q "not for clinical use" "$WORK/gui-export.log" && pass "GUI names the demo model label" || true

echo
echo "Timings (this machine, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)):"
echo "  --version: first start ${VERSION_FIRST} s, second ${VERSION_SECOND} s"
echo "  GUI: process start to first window ${FIRST_WINDOW:-n/a} s wall (${FIRST_WINDOW_CPU:-n/a} s CPU);" \
     "to exported figure and exit ${GUI_SECONDS} s"
echo "Size: $(du -sh "$APP_DIR" | cut -f1) in $(find "$APP_DIR" -type f | wc -l) files"
if [ "$FAILED" -eq 0 ]; then echo "SMOKE TEST PASSED"; else echo "SMOKE TEST FAILED"; fi
exit "$FAILED"
