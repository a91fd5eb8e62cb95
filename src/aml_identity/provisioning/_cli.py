"""Subcommands of ``aml-identity`` for this area (registered by :mod:`aml_identity.cli`)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this area's subcommands to the ``aml-identity`` parser."""
