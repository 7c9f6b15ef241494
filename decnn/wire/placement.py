"""Placements: which device holds which channel groups, and so which of a layer's channels (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Placement:
    """An assignment of ``groups`` channel groups to devices: ``devices[d]`` lists device d's groups.

    Every group sits on exactly one device; a device's groups are kept in ascending order, which is also
    the order of its local channels (group by group).
    """

    groups: int
    devices: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        flat = sorted(g for dev in self.devices for g in dev)
        if not self.devices or any(not dev for dev in self.devices):
            raise ValueError(f"placement {self.as_lists()}: every device needs at least one group")
        if flat != list(range(self.groups)):
            raise ValueError(
                f"placement {self.as_lists()} must assign each of the groups 0..{self.groups - 1} "
                "to exactly one device, e.g. [[0, 1], [2, 3]] for 4 groups on 2 devices"
            )
        object.__setattr__(self, "devices", tuple(tuple(sorted(dev)) for dev in self.devices))

    @classmethod
    def even(cls, groups: int, num_devices: int) -> Placement:
        """Consecutive groups, the same number on every device."""
        if num_devices < 1 or groups % num_devices:
            divisors = [d for d in range(1, groups + 1) if groups % d == 0]
            raise ValueError(
                f"{num_devices} devices cannot share {groups} groups evenly; use one of {divisors} devices "
                "or give an explicit placement such as [[0, 1, 2], [3]]"
            )
        per = groups // num_devices
        return cls(groups, tuple(tuple(range(d * per, (d + 1) * per)) for d in range(num_devices)))

    @classmethod
    def balanced(cls, groups: int, num_devices: int) -> Placement:
        """Consecutive groups, as even as they go: the first ``groups % num_devices`` devices hold one more
        (4 groups on 3 devices: [[0, 1], [2], [3]]); the same as :meth:`even` where the groups divide."""
        if not 1 <= num_devices <= groups:
            raise ValueError(f"{groups} groups split over 1 to {groups} devices, not {num_devices}")
        per, extra = divmod(groups, num_devices)
        bounds = [d * per + min(d, extra) for d in range(num_devices + 1)]
        return cls(groups, tuple(tuple(range(bounds[d], bounds[d + 1])) for d in range(num_devices)))

    @classmethod
    def parse(cls, groups: int, spec: str) -> Placement:
        """Parse ``"0,1,2/3"`` (devices separated by ``/``, groups by ``,``)."""
        try:
            devices = tuple(tuple(int(g) for g in dev.split(",")) for dev in spec.split("/"))
        except ValueError:
            raise ValueError(f"cannot parse placement {spec!r}; expected e.g. '0,1,2/3'") from None
        return cls(groups, devices)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def as_lists(self) -> list[list[int]]:
        return [list(dev) for dev in self.devices]

    def local_channels(self, channels: int, device: int) -> np.ndarray:
        """Global indices of device's channels, in local order, for a tensor of ``channels`` channels."""
        if channels % self.groups:
            raise ValueError(f"{channels} channels cannot be split into {self.groups} groups")
        per = channels // self.groups
        return np.concatenate([np.arange(g * per, (g + 1) * per) for g in self.devices[device]])
