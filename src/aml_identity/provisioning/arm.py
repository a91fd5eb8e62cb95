"""Azure Resource Manager requests for provisioning: the package's one ARM client, :mod:`aml_identity._arm`.

Provisioning and datastore resolution share that client (pipeline, retries, challenge authentication,
long-running-operation polling and the token-scope rule); this module keeps the names provisioning code
and its users import.
"""

from __future__ import annotations

from aml_identity._arm import ARM_SCOPE, RETRY_TOTAL, ArmClient, ArmOperation, ArmResponse, arm_scope

__all__ = ["ARM_SCOPE", "RETRY_TOTAL", "ArmClient", "ArmOperation", "ArmResponse", "arm_scope"]
