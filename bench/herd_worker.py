"""One process of a simulated job, for the herd benchmark and the herd test.

Creates its credentials (one per thread, or one per process shared by its threads), prints ``ready``,
blocks until the parent closes the start pipe, then every thread asks for a token at once. Prints one JSON
line: each thread's outcome and time-to-token, and whether this process loaded the endpoint client (msal).
With ``--exit-fd`` it then waits for the parent to close that pipe before it exits, so that the interpreter
shutdown of the processes done first does not take the CPU from those still waking up.

Clients: ``aml-identity`` (aml_identity.default_credential), ``azure-identity``
(azure.identity.ManagedIdentityCredential with the job's client id, as Microsoft's docs advise) and ``msal``
(msal.ManagedIdentityClient with a requests session).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable


def _factory(client: str, clock_offset: float) -> Callable[[], Callable[[str], str]]:
    """Return a function that creates one credential and returns its get-token callable."""
    client_id = os.environ.get("DEFAULT_IDENTITY_CLIENT_ID")
    if client == "aml-identity":
        from aml_identity import default_credential

        def clock() -> float:
            return time.time() + clock_offset

        def make_aml() -> Callable[[str], str]:
            # A job's credential has no injected clock; only the skewed-clock test passes one.
            credential = default_credential(clock=clock if clock_offset else None)
            return lambda scope: credential.get_token(scope).token

        return make_aml
    if client == "azure-identity":
        from azure.identity import ManagedIdentityCredential

        def make_azure() -> Callable[[str], str]:
            credential = ManagedIdentityCredential(client_id=client_id)
            return lambda scope: credential.get_token(scope).token

        return make_azure
    if client == "msal":
        import msal
        import requests

        def make_msal() -> Callable[[str], str]:
            app = msal.ManagedIdentityClient(
                msal.UserAssignedManagedIdentity(client_id=client_id), http_client=requests.Session()
            )

            def get(scope: str) -> str:
                result = app.acquire_token_for_client(resource=scope.removesuffix("/.default"))
                if "access_token" not in result:
                    raise RuntimeError(f"{result.get('error')}: {result.get('error_description', '')[:200]}")
                return str(result["access_token"])

            return get

        return make_msal
    raise SystemExit(f"unknown client {client!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", default="aml-identity", choices=("aml-identity", "azure-identity", "msal"))
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--per", choices=("thread", "process"), default="thread", help="one credential per ...")
    parser.add_argument("--go-fd", type=int, required=True)
    parser.add_argument("--clock-offset", type=float, default=0.0)
    parser.add_argument("--scope", default="https://storage.azure.com/.default")
    parser.add_argument("--exit-fd", type=int, default=None, help="exit when the parent closes this pipe")
    args = parser.parse_args()

    make = _factory(args.client, args.clock_offset)
    if args.per == "thread":
        getters = [make() for _ in range(args.threads)]
    else:
        shared = make()
        getters = [shared] * args.threads
    go = threading.Event()
    results: list[dict[str, object]] = [{} for _ in getters]

    def run(index: int) -> None:
        go.wait()
        start = time.perf_counter()
        try:
            token = getters[index](args.scope)
            results[index] = {"ok": True, "token_tail": token[-12:], "seconds": time.perf_counter() - start}
        except Exception as exc:  # every failure is reported to the parent
            results[index] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "seconds": time.perf_counter() - start,
            }

    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.read(args.go_fd, 1)  # returns when the parent closes the pipe: every process starts together
    go.set()
    for thread in threads:
        thread.join()
    loaded = "msal" in sys.modules
    sys.stdout.write(json.dumps([{**result, "endpoint_client_loaded": loaded} for result in results]) + "\n")
    sys.stdout.flush()
    if args.exit_fd is not None:
        os.read(args.exit_fd, 1)  # returns when the parent closes the pipe, after every process has reported


if __name__ == "__main__":
    main()
