"""The reliability page, ``docs/reliability.md``: its path and the introduction a fresh page starts with.

Each reliability benchmark (``python -m bench soak``, ``python -m bench storage-faults``...) writes only its own
section, between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` markers, with
:func:`bench._report.update_section`.
"""

from __future__ import annotations

from pathlib import Path

RELIABILITY_MD = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
INTRODUCTION = (
    "# Reliability\n\n"
    "What aml-identity does when things go wrong: the identity endpoint or storage fails, restarts or answers "
    "garbage, a process is killed mid-transfer, tokens expire every 30 seconds for half an hour. Every table is "
    "written by a script in `bench/` that anyone can re-run on the emulators (the command is under each "
    "heading); the tests run the same scenarios and fail when an outcome changes.\n"
)


def ensure_page(path: Path = RELIABILITY_MD) -> None:
    """Create ``path`` with the introduction when it does not exist yet (sections are added after it)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(INTRODUCTION)
