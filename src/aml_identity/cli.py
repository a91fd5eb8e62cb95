"""The ``aml-identity`` command.

Each area registers its own subcommands: the runtime (``whoami``, ``token``) in
:mod:`aml_identity._cli_runtime`, datastores (``download``, ``upload``, ``mount``) in
:mod:`aml_identity.datastore._cli`, provisioning (``cluster ...``) in :mod:`aml_identity.provisioning._cli`,
and the offline tools (``sandbox``) in :mod:`aml_identity.testing._cli`.

The house is lazy: an area's module imports only :mod:`argparse` (and other light modules) to build its
parsers, and each handler imports what it runs when it runs. So ``--help``, ``--version``, every
subcommand's ``--help``, ``whoami`` and ``token`` work on the base install, and a subcommand that needs an
optional extra says which one in one line (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from aml_identity.errors import AmlIdentityError, MissingExtraError

__all__ = ["COMMAND_EXTRAS", "main"]

# Exit codes: 0 success, 1 an aml-identity error (message printed), 2 bad usage (argparse's own convention,
# also used when the command needs an extra that is not installed: the fix is on the user's side).
EXIT_ERROR = 1
EXIT_USAGE = 2

# The subcommands that need an optional extra, checked after parsing (so their --help works without it).
COMMAND_EXTRAS = {"sandbox": "testing", "mount": "mount"}

# The areas' parser modules, in the order their subcommands are listed by --help.
_AREAS = (
    "aml_identity._cli_runtime",
    "aml_identity.datastore._cli",
    "aml_identity.provisioning._cli",
    "aml_identity.testing._cli",
)


class _VersionAction(argparse.Action):
    """``--version``, reading the installed version only when asked (package metadata costs ~30 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,  # noqa: ARG002 - argparse's Action protocol
        values: object,  # noqa: ARG002
        option_string: str | None = None,  # noqa: ARG002
    ) -> None:
        from aml_identity._version import __version__  # noqa: PLC0415 - only for --version

        print(f"{parser.prog} {__version__}")
        parser.exit()


def _build_parser() -> argparse.ArgumentParser:
    import importlib  # noqa: PLC0415 - loaded by the import system already

    parser = argparse.ArgumentParser(
        prog="aml-identity",
        description="Act as your Azure ML compute cluster's managed identity.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for area in _AREAS:
        importlib.import_module(area).register(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    """Run the chosen handler, after checking the extra it needs."""
    extra = COMMAND_EXTRAS.get(args.subcommand)
    if extra is None:
        return int(args.handler(args))
    from aml_identity import _extras  # noqa: PLC0415

    feature = f"aml-identity {args.subcommand}"
    _extras.require(extra, feature)
    try:
        return int(args.handler(args))
    except MissingExtraError:
        raise
    except ModuleNotFoundError as exc:  # no package metadata to check first (a source tree): the import tells
        raise MissingExtraError(feature, extra, (exc.name or str(exc),)) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code.

    Args:
        argv: The arguments (without the program name); ``sys.argv[1:]`` when omitted.

    Returns:
        0 on success, 1 when an aml-identity error was reported, 2 on bad usage or a missing extra.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except MissingExtraError as exc:
        print(f"aml-identity: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AmlIdentityError as exc:
        print(f"aml-identity: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
