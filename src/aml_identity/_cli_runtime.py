"""``aml-identity whoami`` and ``aml-identity token``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import Any

__all__ = ["register"]

# whoami asks for an Azure Resource Manager token by default: every identity can get one, roles or not.
DEFAULT_WHOAMI_RESOURCE = "https://management.azure.com"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``whoami`` and ``token`` to the ``aml-identity`` parser."""
    whoami = subparsers.add_parser(
        "whoami",
        help="show which managed identity this process is (never the token)",
        description="Resolve the job's managed identity, get a token and show whose it is: source, client id, how "
        "it was selected, and the token's identity claims (oid, appid, tid, xms_mirid) and expiry.",
    )
    whoami.add_argument("--resource", default=DEFAULT_WHOAMI_RESOURCE, help="resource to get the token for")
    whoami.add_argument("--client-id", help="use this user-assigned identity instead of the default")
    whoami.add_argument("--json", action="store_true", help="print JSON")
    whoami.set_defaults(handler=_whoami)

    token = subparsers.add_parser(
        "token",
        help="print a token for a resource to stdout (for shell scripts)",
        description="Print an access token for RESOURCE to stdout, from the node-wide cache when it is fresh.",
    )
    token.add_argument("--resource", required=True, help="resource or scope, e.g. https://storage.azure.com")
    token.add_argument("--client-id", help="use this user-assigned identity instead of the default")
    token.add_argument("--json", action="store_true", help="print {accessToken, expiresOn, tokenType} as JSON")
    token.set_defaults(handler=_token)


def _iso(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat()


def _whoami(args: argparse.Namespace) -> int:
    from aml_identity._claims import identity_claims  # noqa: PLC0415 - PyJWT, only for whoami
    from aml_identity.credential import default_credential  # noqa: PLC0415 - keep `--help` light

    credential = default_credential(client_id=args.client_id)
    info = credential.get_token_info(args.resource)
    identity = credential.identity
    report: dict[str, Any] = {
        "source": identity.source,
        "client_id": identity.client_id,
        "selected_by": identity.selected_by,
        "endpoint": identity.endpoint,
        "resource": args.resource,
        "claims": identity_claims(info.token),
        "expires_on": _iso(info.expires_on),
        "expires_in_seconds": max(0, int(info.expires_on - time.time())),
        "refresh_on": _iso(info.refresh_on) if info.refresh_on else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = max(len(k) for k in ("source", "client id", "selected by", "endpoint", "resource", "expires"))
    lines = [
        ("source", identity.source),
        ("client id", identity.client_id or "(platform default)"),
        ("selected by", identity.selected_by),
        ("endpoint", identity.endpoint),
        ("resource", args.resource),
    ]
    for name, value in report["claims"].items():
        if name not in ("iat", "exp"):
            lines.append((name, str(value)))
    lines.append(("expires", f"{report['expires_on']} (in {report['expires_in_seconds']} s)"))
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from aml_identity.credential import default_credential  # noqa: PLC0415 - keep `--help` light

    credential = default_credential(client_id=args.client_id)
    info = credential.get_token_info(args.resource)
    if args.json:
        json.dump({"accessToken": info.token, "expiresOn": info.expires_on, "tokenType": info.token_type}, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(info.token + "\n")
    return 0
