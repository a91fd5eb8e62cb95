"""Check, before creating a cluster, that its VM size is offered and that it fits the core quota."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aml_identity.errors import ConfigurationError, QuotaExceededError

if TYPE_CHECKING:
    from aml_identity._arm import ArmClient
    from aml_identity.provisioning.spec import ClusterSpec

__all__ = ["QuotaLine", "preflight"]

COMPUTE_API_VERSION = "2025-12-01"
_TOTAL_DEDICATED = "Total Cluster Dedicated Regional vCPUs"
_TOTAL_LOW_PRIORITY = "Total Cluster LowPriority Regional vCPUs"
# How many similar VM size names an error suggests.
_SUGGESTIONS = 6
_QUOTA_HOWTO = (
    "Request more in the Azure portal (your workspace > Quota, or Help + support > Create a support request "
    "> "
    "Service and subscription limits (quotas) > Machine Learning Service: Virtual Machine Quota)"
)


@dataclass(frozen=True)
class QuotaLine:
    """One ``usages`` line: its name, the limit (-1: none) and what is used."""

    name: str
    limit: int
    current: int

    @property
    def free(self) -> int | None:
        """VCPUs left, or None without a limit."""
        return None if self.limit < 0 else self.limit - self.current


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _location_path(subscription_id: str, location: str, what: str) -> str:
    provider = "providers/Microsoft.MachineLearningServices"
    return f"/subscriptions/{subscription_id}/{provider}/locations/{location}/{what}"


def _vm_size(arm: ArmClient, subscription_id: str, location: str, spec: ClusterSpec) -> dict[str, Any]:
    sizes = arm.call(
        "GET",
        _location_path(subscription_id, location, "vmSizes"),
        api_version=COMPUTE_API_VERSION,
        what=f"listing the VM sizes of {location}",
    ).body
    sizes = (sizes or {}).get("value") or []
    by_name = {str(size.get("name", "")).lower(): size for size in sizes}
    size = by_name.get(spec.vm_size.lower())
    if size is None:
        names = [str(s.get("name")) for s in sizes]
        close = difflib.get_close_matches(spec.vm_size, names, n=_SUGGESTIONS, cutoff=0.5) or names[:_SUGGESTIONS]
        msg = (
            f"VM size {spec.vm_size!r} is not offered for AmlCompute in {location}. Pick one that is "
            f"(for example {', '.join(close)}), or another location; `az ml compute list-sizes -l "
            f"{location}` "
            "lists them all."
        )
        raise ConfigurationError(msg, name="vm_size")
    if spec.vm_priority == "lowpriority" and size.get("lowPriorityCapable") is False:
        msg = f"VM size {size['name']!r} cannot run low-priority nodes in {location}; use vm_priority='dedicated'."
        raise ConfigurationError(msg, name="vm_priority")
    return dict(size)


def _quota_lines(arm: ArmClient, subscription_id: str, location: str) -> dict[str, QuotaLine]:
    usages = arm.list_all(
        _location_path(subscription_id, location, "usages"),
        api_version=COMPUTE_API_VERSION,
        what=f"reading the core quota of {location}",
    )
    lines: dict[str, QuotaLine] = {}
    for usage in usages:
        kind = str(usage.get("type", ""))
        if kind.endswith(("/workspaces/usages", "/workspace/usages", "computes/usages")):
            continue  # per-workspace and per-cluster breakdowns of the subscription's lines
        name = str((usage.get("name") or {}).get("value") or "")
        if name and isinstance(usage.get("limit"), int):
            lines[_key(name)] = QuotaLine(name, int(usage["limit"]), int(usage.get("currentValue") or 0))
    return lines


def preflight(arm: ArmClient, subscription_id: str, location: str, spec: ClusterSpec) -> None:
    """Refuse, before any PUT, a cluster whose VM size is not offered or whose ``max_nodes`` exceeds quota.

    Dedicated clusters must fit both their VM family's dedicated quota and the regional dedicated total;
    low-priority clusters the regional low-priority total (and a family limit, when there is one).

    Raises:
        ConfigurationError: The VM size is not offered there (or cannot be low priority).
        QuotaExceededError: ``max_nodes`` x the size's vCPUs exceeds a quota; says how to get more.
    """
    size = _vm_size(arm, subscription_id, location, spec)
    vcpus = int(size.get("vCPUs") or 0)
    family = str(size.get("family") or "")
    needed = spec.max_nodes * vcpus
    if needed == 0:
        return
    lines = _quota_lines(arm, subscription_id, location)
    kind = "Dedicated" if spec.vm_priority == "dedicated" else "LowPriority"
    wanted = [_key(f"{family}Cluster{kind}vCPUs")]
    wanted.append(_key(_TOTAL_DEDICATED if kind == "Dedicated" else _TOTAL_LOW_PRIORITY))
    for key in wanted:
        line = lines.get(key)
        free = line.free if line else None
        if line is None or free is None or needed <= free:
            continue
        fits = max(free, 0) // vcpus if vcpus else 0
        cheaper = " or use vm_priority='lowpriority' (a separate quota)," if kind == "Dedicated" else ""
        msg = (
            f"Cluster {spec.name!r} could need {needed} {kind.lower()} vCPUs ({spec.max_nodes} x "
            f"{size['name']} "
            f"with {vcpus} vCPUs each), but the '{line.name}' quota in {location} has {max(free, 0)} of "
            f"{line.limit} free. {_QUOTA_HOWTO},{cheaper} or lower max_nodes to {fits}. "
            "Pass preflight=False to create it anyway."
        )
        raise QuotaExceededError(msg, error_code="QuotaExceeded")
