"""The job's own credential, built on first use.

Datastore transfers and resolution, and ``Workspace.from_job_environment``, fall back to the job identity
when no credential is given. They import :mod:`aml_identity.credential` only then, through this helper, so
that importing them stays cheap and free of import cycles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from azure.core.credentials import TokenCredential

__all__ = ["job_credential"]


def job_credential(environ: Mapping[str, str] | None = None) -> TokenCredential:
    """Return the job's default credential (``aml_identity.default_credential(environ=environ)``).

    Args:
        environ: The environment to read (``os.environ`` when omitted).

    Returns:
        The credential.
    """
    from aml_identity.credential import default_credential  # noqa: PLC0415 - only when one is needed

    credential: TokenCredential = default_credential(environ=environ)
    return credential
