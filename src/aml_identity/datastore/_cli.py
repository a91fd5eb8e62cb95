"""``aml-identity download URI DEST`` and ``aml-identity upload SRC URI`` (registered by :mod:`aml_identity.cli`)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="parallel requests (default 32)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this area's subcommands to the ``aml-identity`` parser."""
    down = subparsers.add_parser(
        "download",
        help="download a blob or a folder from a datastore with the job identity",
        description="Download a blob or a folder (prefix) with the job's identity. Verified, resumable, and "
        "files already up to date are skipped.",
    )
    down.add_argument("uri", help="datastore URI (azureml://, wasbs://, abfss://, https://)")
    down.add_argument("dest", help="local file or folder")
    down.add_argument("--no-resume", action="store_true", help="restart interrupted downloads from zero")
    down.add_argument(
        "--once-per-node", action="store_true", help="one process per node downloads, the others wait for it"
    )
    _add_common(down)
    down.set_defaults(handler=_download)

    up = subparsers.add_parser(
        "upload",
        help="upload a file or a folder to a datastore with the job identity",
        description="Upload a file or a folder with the job's identity; each blob is written atomically and "
        "files already up to date are skipped.",
    )
    up.add_argument("src", help="local file or folder")
    up.add_argument("uri", help="destination datastore URI")
    up.add_argument("--overwrite", action="store_true", help="replace existing blobs whose content differs")
    _add_common(up)
    up.set_defaults(handler=_upload)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def _report(args: argparse.Namespace, result: object) -> int:
    from aml_identity.datastore.transfer import TransferResult  # noqa: PLC0415

    assert isinstance(result, TransferResult)  # noqa: S101 - our own return value
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    verb = "downloaded" if result.direction == "download" else "uploaded"
    if result.shared:
        print(f"{result.destination}: another process on this node downloaded it ({result.files} files)")
        return 0
    print(
        f"{verb} {result.transferred_files} file(s), {result.bytes_transferred / 2**20:.1f} MiB in "
        f"{result.seconds:.1f} s; {result.skipped_files} already up to date"
        + (f"; {result.bytes_resumed / 2**20:.1f} MiB resumed" if result.bytes_resumed else "")
        + f" -> {result.destination}"
    )
    return 0


def _download(args: argparse.Namespace) -> int:
    from aml_identity.datastore.transfer import download  # noqa: PLC0415 - keep `--help` fast

    result = download(
        args.uri,
        args.dest,
        max_concurrency=args.max_concurrency,
        resume=not args.no_resume,
        once_per_node=args.once_per_node,
        progress=_progress(args),
    )
    return _report(args, result)


def _upload(args: argparse.Namespace) -> int:
    from aml_identity.datastore.transfer import upload  # noqa: PLC0415 - keep `--help` fast

    result = upload(
        args.src, args.uri, overwrite=args.overwrite, max_concurrency=args.max_concurrency, progress=_progress(args)
    )
    return _report(args, result)
