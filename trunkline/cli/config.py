"""`config check|apply|show`: operator config (YAML) and the compacted config topics."""

from __future__ import annotations

import argparse
from pathlib import Path

from trunkline.cli.common import EXIT_OK, Context, RichProgress, Subparsers, print_json, say


def register(sub: Subparsers) -> None:
    c = sub.add_parser("config", help="validate, publish or show operator config")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    chk = csub.add_parser("check", help="validate a YAML file without connecting to anything")
    chk.add_argument("file", type=Path)
    app_ = csub.add_parser("apply", help="validate, then publish to the compacted config topics")
    app_.add_argument("file", type=Path)
    app_.add_argument(
        "--prune",
        action="store_true",
        help="delete (tombstone) records that are in the topics but not the file",
    )
    show = csub.add_parser("show", help="print the config as the topics hold it (JSON)")
    show.add_argument("section", nargs="?")
    c.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import config

    if args.action == "show":
        print_json(config.show(ctx.settings, args.section), sort_keys=True)
        return EXIT_OK
    loaded = config.load(args.file)
    summary = config.summary(config.counts(loaded))
    if args.action == "check":
        say(f"{args.file}: valid ({summary})")
        return EXIT_OK
    with RichProgress() as progress:
        applied = config.apply(ctx.settings, args.file, loaded, args.prune, progress)
    deleted = f"; deleted {', '.join(applied.pruned)}" if applied.pruned else ""
    say(f"published {applied.published} record(s) from {args.file} ({summary}){deleted}")
    return EXIT_OK
