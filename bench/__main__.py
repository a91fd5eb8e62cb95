"""``python -m bench NAME [options]``: run one benchmark (tokens, transfer, mount, imports, faults) or ``all``.

Performance (``docs/performance.md``): tokens, transfer, mount, imports. Reliability (``docs/reliability.md``):
faults, storage-faults, and soak (``--minutes 30``; neither storage-faults nor soak is part of ``all``).
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("tokens", "transfer", "mount", "imports", "faults")


def main(argv: list[str]) -> int:
    """Dispatch to ``bench.<NAME>.main``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    names = BENCHMARKS if name == "all" else (name,)
    for each in names:
        module = importlib.import_module(f"bench.{each.replace('-', '_')}")
        code = module.main(rest)
        if code:
            return int(code)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
