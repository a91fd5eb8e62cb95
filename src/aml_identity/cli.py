"""The ``aml-identity`` command.

Each area registers its own subcommands: the runtime (``whoami``, ``token``) here, datastores
(``download``, ``upload``) in :mod:`aml_identity.datastore._cli`, provisioning (``cluster ...``) in
:mod:`aml_identity.provisioning._cli`, and the offline tools (``sandbox``) in :mod:`aml_identity.testing._cli`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aml_identity import __version__
from aml_identity.errors import AmlIdentityError

__all__ = ["main"]

# Exit codes: 0 success, 1 an aml-identity error (message printed), 2 bad usage (argparse's own convention).
EXIT_ERROR = 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aml-identity",
        description="Act as your Azure ML compute cluster's managed identity.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from aml_identity import _cli_doctor, _cli_runtime  # noqa: PLC0415 - keep `--help` fast; import areas on demand
    from aml_identity.datastore import _cli as datastore_cli  # noqa: PLC0415
    from aml_identity.provisioning import _cli as provisioning_cli  # noqa: PLC0415
    from aml_identity.testing import _cli as testing_cli  # noqa: PLC0415

    for area in (_cli_runtime, _cli_doctor, datastore_cli, provisioning_cli, testing_cli):
        area.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code.

    Args:
        argv: The arguments (without the program name); ``sys.argv[1:]`` when omitted.

    Returns:
        0 on success, 1 when an aml-identity error was reported, 2 on bad usage.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except AmlIdentityError as exc:
        print(f"aml-identity: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
