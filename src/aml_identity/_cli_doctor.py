"""``aml-identity doctor``: registered here, run by :mod:`aml_identity._doctor` (imported only when it runs)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]

# Exit code when a check failed (0 when none did; warnings do not fail).
EXIT_FAILED = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor`` to the ``aml-identity`` parser."""
    doctor = subparsers.add_parser(
        "doctor",
        help="check the job's identity, endpoint, token, clock, node cache and a datastore (inside a job)",
        description="Run inside a job when something does not work: which identity source was chosen and why "
        "(the variables that decided it), whether the endpoint is reachable, a token's decoded claims (oid, appid, "
        "tid, xms_mirid, expiry; never the token), clock skew against the token's iat, the node-wide token cache "
        "(directory, ownership, mode, hit or miss) and, with --datastore, resolving, listing and reading it. Each "
        "check passes, warns or fails with a fix. Exit code 0 when nothing failed, 1 otherwise.",
    )
    doctor.add_argument("--datastore", metavar="URI", help="also resolve, list and read the first blob of URI")
    doctor.add_argument(
        "--json", action="store_true", help='print {"ok": bool, "checks": [{"name", "status", "detail", "fix"}]}'
    )
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from aml_identity import _doctor  # noqa: PLC0415 - only when doctor runs

    checks = _doctor.run_checks(datastore=args.datastore)
    document = _doctor.report(checks)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        _doctor.print_text(checks, sys.stdout.write)
    return 0 if document["ok"] else EXIT_FAILED
