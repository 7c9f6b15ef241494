"""Exchange plans at shuffle points, derived from the shuffle's permutation and the placement.

Before a shuffle, device d holds its groups' channels; after it, device d needs the channels that the
permutation moves into its groups. One all-to-all moves them: device s sends ``send_index`` (its local
channels, ordered by destination) in blocks of ``send_splits``; device d receives ``recv_splits`` channels
from each source, concatenated in source order, and reorders them with ``recv_index``.
"""

from __future__ import annotations

import torch

from decnn.wire.exchange import ShufflePlan
from decnn.wire.placement import Placement


def exchange_plans(permutation: torch.Tensor, placement: Placement) -> list[ShufflePlan]:
    """Plans for every device at a shuffle ``out[:, j] = in[:, permutation[j]]``."""
    channels = len(permutation)
    num = placement.num_devices
    owner_of_group = {g: d for d, dev in enumerate(placement.devices) for g in dev}
    per_group = channels // placement.groups
    owner = torch.tensor([owner_of_group[c // per_group] for c in range(channels)])
    local = [torch.from_numpy(placement.local_channels(channels, d)) for d in range(num)]
    position = torch.empty(channels, dtype=torch.long)  # old channel -> index in its owner's local layout
    for d in range(num):
        position[local[d]] = torch.arange(len(local[d]))

    # sources[d][s]: positions k (in d's new local order) of the channels that d receives from s.
    sources, send_blocks = [], [[None] * num for _ in range(num)]
    for d in range(num):
        old = permutation[local[d]]
        sources.append([(owner[old] == s).nonzero().flatten() for s in range(num)])
        for s in range(num):
            send_blocks[s][d] = position[old[sources[d][s]]]

    plans = []
    for d in range(num):
        received_order = torch.cat(sources[d])  # k of each received channel, in arrival order
        recv_index = torch.empty_like(received_order)
        recv_index[received_order] = torch.arange(len(received_order))
        plans.append(
            ShufflePlan(
                device=d,
                send_index=torch.cat(send_blocks[d]).numpy(),
                send_splits=[len(b) for b in send_blocks[d]],
                recv_splits=[len(sources[d][s]) for s in range(num)],
                recv_index=recv_index.numpy(),
            )
        )
    return plans


def local_exchange(plans: list[ShufflePlan], outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The reference exchange with every branch in one process: the same data movement as the all-to-all."""
    chunks = [
        torch.split(out.index_select(1, torch.from_numpy(plan.send_index)), plan.send_splits, dim=1)
        for plan, out in zip(plans, outputs)
    ]
    return [
        torch.cat([chunks[s][d] for s in range(len(plans))], dim=1).index_select(1, torch.from_numpy(plan.recv_index))
        for d, plan in enumerate(plans)
    ]
