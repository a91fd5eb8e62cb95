"""One process of the fault matrix's 16-process rows (see ``bench/faults.py``).

Reads one JSON command per line from stdin (``mode``, ``clock`` file, job ``environ``), creates its
credential on the shared injected clock, prints ``ready``, waits for a ``go`` line, asks for a token and
prints one JSON line: the outcome, the injected time it took and the wall time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from aml_identity import aio
from aml_identity.credential import default_credential
from bench._shared_clock import SharedClock
from bench.faults import SCOPE, HangChargingSession, observe


def _getter(mode: str, clock: SharedClock, session: HangChargingSession) -> Callable[[], Any]:
    """Create the credential (sync or async) and return a call that gets one token with it."""
    if mode == "sync":
        credential = default_credential(clock=clock, sleep=clock.sleep, session=session)
        return lambda: credential.get_token(SCOPE)
    async_credential = aio.default_credential(clock=clock, sleep=clock.sleep, session=session)
    return lambda: asyncio.run(async_credential.get_token(SCOPE))


def main() -> None:
    """Run commands from stdin until it closes."""
    for line in sys.stdin:
        command = json.loads(line)
        for name in list(os.environ):
            if name.startswith(("MSI_", "IDENTITY_", "AZURE_", "DEFAULT_IDENTITY", "AML_IDENTITY_")):
                del os.environ[name]
        os.environ.update(command["environ"])
        clock = SharedClock(command["clock"])
        session = HangChargingSession(clock.advance)
        get = _getter(command["mode"], clock, session)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        if sys.stdin.readline().strip() != "go":
            return
        wall = time.perf_counter()
        clock.arrive()
        result = observe(get, clock, lambda: 0)
        result["wall"] = time.perf_counter() - wall
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        clock.close()


if __name__ == "__main__":
    main()
