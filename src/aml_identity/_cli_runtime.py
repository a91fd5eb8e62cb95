"""``aml-identity whoami`` and ``aml-identity token``."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``whoami`` and ``token`` to the ``aml-identity`` parser."""
