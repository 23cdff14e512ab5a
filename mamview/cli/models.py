"""Commands of the models area: `models list|install|info`."""

from __future__ import annotations

import argparse

from mamview.cli.common import CliError, ensure_library, print_json, term
from mamview.core.paths import Library


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's commands to `sub`."""
    s = sub.add_parser("models", help="list, install or describe risk models")
    s.add_argument("action", choices=("list", "install", "info"),
                   help="list: the models and why a missing one is missing; install: convert "
                   "the official Mirai release at PATH; info: list plus each model's folder and "
                   "configuration")
    s.add_argument("path", nargs="?", metavar="PATH", help="release folder or zip (install)")
    s.add_argument("--json", action="store_true", help="print the model list as JSON")
    s.set_defaults(func=cmd_models)


def cmd_models(args, lib: Library) -> int:
    """List the models (and why a missing one is missing), describe them, or install Mirai."""
    from mamview.core.models import registry

    if args.action == "install":
        from mamview.core.models.official.release import convert_release

        if not args.path:
            raise CliError("models install needs the path of the release folder or zip")
        models = ensure_library(lib).models
        # every refusal is a MamviewError worded by the model area: the top-level handler prints it
        out = convert_release(args.path, models)
        print(f"Installed Mirai into {term(out)}")
        return 0
    entries = registry.list_models(lib)
    if args.json:
        print_json([vars(e) for e in entries])
        return 0
    for e in entries:
        state = "available" if e.available else f"unavailable: {e.reason}"
        # names and labels come from model files someone downloaded
        print(f"{term(e.model_id):<6} {term(e.name):<34} {term(state)}")
        if e.available and e.label:
            print(f"{'':<6} {term(e.label)}")
        if args.action == "info" and e.available:
            print(f"{'':<6} folder: {term(e.folder)}")
            text = (e.folder / "config.json").read_text(errors="replace")
            print("\n".join(term(line) for line in text.splitlines()))
    return 0
