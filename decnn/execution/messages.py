"""What a runtime's transport gives the executors: messages in flight, and the collectives a split uses.

Both runtimes implement :class:`Transport` (gloo or NCCL through torch.distributed; MPI without torch); every
call returns a :class:`Pending` whose ``wait`` is bound by the run's timeout and names a peer that failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Array = Any  # a torch.Tensor or a numpy.ndarray: both slice, reshape and assign alike


class Pending(Protocol):
    def wait(self) -> Any: ...


class Transport(Protocol):
    """A runtime's messages among the devices of a split."""

    rank: int

    def broadcast(self, array: Array, root: int) -> Pending: ...

    def reduce_sum(self, array: Array, root: int) -> Pending:
        """Sum ``array`` over the devices; ``wait()`` returns the sum on ``root`` (None elsewhere)."""

    def all_to_all(self, send: Array, send_counts: list[int], recv: Array, recv_counts: list[int]) -> Pending:
        """Flat ``send`` in blocks of ``send_counts[d]`` elements, one for each device d in rank order; flat
        ``recv`` gets ``recv_counts[s]`` elements from each device s, in rank order."""

    def exchange(self, sends: list[tuple[Array, int, int]], receives: list[tuple[Array, int, int]]) -> Pending:
        """A spatial step's halos, every device of the group taking part: ``sends`` (array, destination, tag)
        and ``receives`` (array, source, tag; filled). Between two devices, messages go in tag order."""


class Then:
    """A pending message whose ``wait`` returns ``value()`` once it is done (a runtime's reduce into a buffer)."""

    def __init__(self, pending: Pending, value: Callable[[], Any]):
        self.pending, self.value = pending, value

    def wait(self) -> Any:
        self.pending.wait()
        return self.value()


class AllOf:
    """Several pending messages, waited for together."""

    def __init__(self, pending: list[Pending]):
        self.pending = pending

    def wait(self) -> None:
        for p in self.pending:
            p.wait()


class Done:
    """A message that needed no waiting (``value``, or ``then()`` run at the wait)."""

    def __init__(self, value: Any = None, then: Callable[[], Any] | None = None):
        self.value, self.then = value, then

    def wait(self) -> Any:
        return self.then() if self.then else self.value
