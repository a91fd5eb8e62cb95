"""Async twins of the runtime API: :class:`AsyncJobCredential` and :func:`default_credential`."""

from __future__ import annotations

from aml_identity.aio._credential import AsyncJobCredential, default_credential

__all__ = ["AsyncJobCredential", "default_credential"]
