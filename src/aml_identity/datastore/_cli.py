"""``aml-identity download``, ``upload`` and ``mount`` (registered by :mod:`aml_identity.cli`)."""

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

    mnt = subparsers.add_parser(
        "mount",
        help="mount a datastore folder with the job identity (FUSE), in the foreground",
        description="Mount the folder a datastore URI names, read-only or read-write, with the job's identity, and "
        "serve it until unmounted (fusermount3 -u), SIGTERM or Ctrl-C. Prints 'mounted URI at PATH (MODE)' when "
        "ready. See docs/mount.md.",
    )
    mnt.add_argument("uri", help="datastore URI (azureml://, wasbs://, abfss://, https://); its path is mounted")
    mnt.add_argument(
        "mount_point", nargs="?", default=None, help="empty folder to mount on (default: a new temp folder)"
    )
    mnt.add_argument("--mode", choices=("ro", "rw"), default="ro", help="read-only (default) or read-write")
    mnt.add_argument("--cache-dir", metavar="D", help="disk block cache (and rw staging) folder")
    mnt.add_argument("--cache-size", metavar="SIZE", help="disk cache limit, e.g. 20GiB (default: half the free space)")
    mnt.add_argument(
        "--attr-timeout", type=float, default=None, metavar="S", help="seconds listings are trusted (default 60)"
    )
    mnt.add_argument("--client-id", help="use this user-assigned identity instead of the default")
    mnt.add_argument("--object-id", help=argparse.SUPPRESS)
    mnt.add_argument("--resource-id", help=argparse.SUPPRESS)
    mnt.add_argument("--exit-with-stdin", action="store_true", help=argparse.SUPPRESS)  # used by mount()
    mnt.set_defaults(handler=_mount)


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
    if result.outcome == "waited":
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


def _mount(args: argparse.Namespace) -> int:
    from aml_identity.datastore._fuse_cache import parse_size  # noqa: PLC0415 - keep `--help` fast
    from aml_identity.datastore._fuse_fs import ATTR_CACHE_TTL_S  # noqa: PLC0415
    from aml_identity.datastore._fuse_main import MountOptions, serve  # noqa: PLC0415
    from aml_identity.errors import ConfigurationError  # noqa: PLC0415

    try:
        cache_size = parse_size(args.cache_size) if args.cache_size is not None else None
    except ValueError as exc:
        raise ConfigurationError(f"--cache-size {args.cache_size}: {exc}.", name="--cache-size") from None
    attr_timeout = ATTR_CACHE_TTL_S if args.attr_timeout is None else args.attr_timeout
    if attr_timeout < 0:
        raise ConfigurationError("--attr-timeout must be 0 or more seconds.", name="--attr-timeout")
    return serve(
        MountOptions(
            uri=args.uri,
            mount_point=args.mount_point,
            mode=args.mode,
            cache_dir=args.cache_dir,
            cache_size=cache_size,
            attr_timeout=attr_timeout,
            client_id=args.client_id,
            object_id=args.object_id,
            resource_id=args.resource_id,
            exit_with_stdin=args.exit_with_stdin,
        )
    )
