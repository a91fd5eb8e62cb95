"""Write one benchmark's section of ``docs/performance.md`` without touching the other sections."""

from __future__ import annotations

import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

PERFORMANCE_MD = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
_HEADER = (
    "# Performance\n\n"
    "Every table here is written by a benchmark in `bench/`, which runs aml-identity and its peers side by side "
    "in one run on the same emulators. Re-run with `make bench` (or the command under each table).\n"
)


def machine() -> str:
    """Describe the machine and interpreter a table was measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip() or "?"
    return f"{cpu}, {cores} cores, Linux {platform.release()}, Python {platform.python_version()}"


def versions(*packages: str) -> str:
    """Return ``name version`` for each installed package."""
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def update_section(name: str, markdown: str, path: Path = PERFORMANCE_MD, *, header: str = _HEADER) -> None:
    """Replace (or append) the section delimited by ``<!-- bench:NAME -->`` markers in ``path``.

    ``header`` starts the page when ``path`` does not exist yet.
    """
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else header
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
