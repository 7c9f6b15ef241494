"""Partitioning a decoupled model into per-device branches (pure torch; no torch.distributed here)."""

from decnn.partition.branch import Branch, extract_branch, extract_branches, run_branches_locally
from decnn.partition.exchange_plans import exchange_plans, local_exchange
from decnn.wire.placement import Placement

__all__ = [
    "Branch",
    "Placement",
    "exchange_plans",
    "extract_branch",
    "extract_branches",
    "local_exchange",
    "run_branches_locally",
]
