#!/usr/bin/env bash
# Install (or remove) the mamview application folder on Linux, with its menu entry and icon.
# It ships inside the bundle: run it from there.
#
#   ./install-linux.sh              for this user: ~/.local/opt/mamview, ~/.local/bin/mamview
#   sudo ./install-linux.sh --system   for everyone: /opt/mamview, /usr/local/bin/mamview
#   ./install-linux.sh --uninstall [--system]
#
# Never touches the library (exams cache, previews, models, logs): see docs/install.md to
# remove or move it.
set -euo pipefail

SRC="$(cd "$(dirname "$0")" && pwd)"
MODE=user
ACTION=install
for arg in "$@"; do
    case "$arg" in
        --system) MODE=system ;;
        --uninstall) ACTION=uninstall ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "install-linux.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

if [ "$MODE" = system ]; then
    APPDIR=/opt/mamview
    BINDIR=/usr/local/bin
    SHARE=/usr/local/share
else
    APPDIR="$HOME/.local/opt/mamview"
    BINDIR="$HOME/.local/bin"
    SHARE="${XDG_DATA_HOME:-$HOME/.local/share}"
fi
ICON_SIZES="16 24 32 48 64 128 256 512"

refresh_menus() {
    command -v update-desktop-database >/dev/null && update-desktop-database -q "$SHARE/applications" || true
    command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$SHARE/icons/hicolor" || true
}

if [ "$ACTION" = uninstall ]; then
    # the command link only if it is ours (another mamview, e.g. pip's, stays)
    if [ "$(readlink "$BINDIR/mamview" 2>/dev/null)" = "$APPDIR/mamview" ]; then rm -f "$BINDIR/mamview"; fi
    rm -f "$SHARE/applications/mamview.desktop" \
          "$SHARE/icons/hicolor/scalable/apps/mamview.svg"
    for s in $ICON_SIZES; do rm -f "$SHARE/icons/hicolor/${s}x${s}/apps/mamview.png"; done
    # only a folder that is recognisably ours
    if [ -x "$APPDIR/mamview" ] && [ -f "$APPDIR/BUILD-INFO.txt" ]; then rm -rf "$APPDIR"; fi
    refresh_menus
    echo "Removed mamview from $APPDIR. Your library was left in place (docs/install.md)."
    exit 0
fi

[ -x "$SRC/mamview" ] && [ -d "$SRC/_internal" ] || {
    echo "install-linux.sh: run the copy inside the built application folder (dist/mamview)" >&2
    exit 2
}
if [ "$SRC" != "$APPDIR" ]; then
    mkdir -p "$(dirname "$APPDIR")"
    rm -rf "$APPDIR.new"
    cp -a "$SRC" "$APPDIR.new"      # copy first, then swap: a failed copy leaves the old one
    rm -rf "$APPDIR"
    mv "$APPDIR.new" "$APPDIR"
fi
mkdir -p "$BINDIR" "$SHARE/applications" "$SHARE/icons/hicolor/scalable/apps" "$APPDIR/bin"
ln -sf "$APPDIR/mamview" "$BINDIR/mamview"
ln -sfn ../mamview "$APPDIR/bin/mamview"   # the path mamview-node.service runs (/opt/mamview/bin/mamview)
RES="$APPDIR/_internal/resources"
# absolute Exec/TryExec: menus do not read ~/.local/bin from PATH on every desktop
sed -e "s|^Exec=mamview|Exec=$APPDIR/mamview|" -e "s|^TryExec=.*|TryExec=$APPDIR/mamview|" \
    "$RES/mamview.desktop" > "$SHARE/applications/mamview.desktop"
cp "$RES/icons/mamview.svg" "$SHARE/icons/hicolor/scalable/apps/mamview.svg"
for s in $ICON_SIZES; do
    mkdir -p "$SHARE/icons/hicolor/${s}x${s}/apps"
    cp "$RES/icons/mamview-$s.png" "$SHARE/icons/hicolor/${s}x${s}/apps/mamview.png"
done
refresh_menus
echo "Installed mamview in $APPDIR; command: $BINDIR/mamview; menu entry: $SHARE/applications/mamview.desktop"
case ":$PATH:" in *":$BINDIR:"*) ;; *) echo "Note: $BINDIR is not on your PATH." ;; esac
