"""Where the groups go on boards that differ, from the boards' own measurements, and the plan file that says so.

Every placement of consecutive groups over the boards in their order (board 0 holds the inputs) is predicted
with the cost model of the device runtime (:func:`decnn.edge.profile.predict`, lockstep): per step the slowest
board, each board timed on its own with the number of groups it would hold, then the exchange's bytes over the
measured links. A placement fits where every board's measured peak RSS for its groups, plus MPI's share, is
within its free memory; the fastest that fits is the plan. No torch here: the bytes of an exchange follow from
the shuffle's permutation.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from decnn.common.costmodel import Prediction
from decnn.edge.profile import predict

FORMAT = "decnn-boards-plan/1"
PLAN = "plan.json"  # beside the export it chose
MiB = 2**20
# Beyond a branch's peak RSS measured without MPI: MPI's own (an idle device holds ~64 MiB with it, ~45 without).
MEMORY_MARGIN_BYTES = 32 * MiB


class PlanError(ValueError):
    """A plan that cannot be read, or boards on which no placement fits."""


@dataclass(frozen=True)
class BoardProfile:
    """One board's measurements (``decnn.cluster.measure``): ``step_s[k - 1]`` the seconds of each step of a
    branch of k groups at the plan's batch (segments with their packing, the head last), ``peak_rss[k - 1]`` its
    device process's peak RSS in bytes; None for both where the board could not run k groups."""

    host: str
    step_s: list[list[float] | None]
    peak_rss: list[int | None]
    memory_available: int
    cpus: int


@dataclass(frozen=True)
class Links:
    """Every ordered pair of boards (``decnn.cluster.links``): one-way latency (s), bytes/s, and each board's
    burst (bytes its link lets through at once after an idle spell)."""

    latency_s: list[list[float]]
    bytes_per_s: list[list[float]]
    burst: list[float]


@dataclass(frozen=True)
class Traffic:
    """What the model moves: each shuffle's permutation and the pixels of its maps, and per image the input's and
    the logits' bytes."""

    permutations: list[list[int]]
    pixels: list[int]
    input_bytes: int
    result_bytes: int


def placements(groups: int, devices: int) -> list[list[list[int]]]:
    """Every placement of consecutive groups with at least one group per device, e.g. [[0, 1, 2], [3]]."""
    out = []
    for cuts in itertools.combinations(range(1, groups), devices - 1):
        edges = [0, *cuts, groups]
        out.append([list(range(a, b)) for a, b in itertools.pairwise(edges)])
    return out


def sent_bytes(traffic: Traffic, placement: list[list[int]], batch: int) -> list[list[list[float]]]:
    """``[s][i][j]``: the fp32 bytes device i sends device j at shuffle s for a batch: the channels that the
    permutation moves from i's groups into j's (``out[:, c] = in[:, permutation[c]]``)."""
    n, groups = len(placement), sum(map(len, placement))
    device_of = {g: d for d, held in enumerate(placement) for g in held}
    out = []
    for permutation, pixels in zip(traffic.permutations, traffic.pixels):
        per_group = len(permutation) // groups
        sent = [[0.0] * n for _ in range(n)]
        for c, source in enumerate(permutation):
            i, j = device_of[source // per_group], device_of[c // per_group]
            if i != j:
                sent[i][j] += pixels * 4 * batch
        out.append(sent)
    return out


def predict_placement(boards: list[BoardProfile], links: Links, traffic: Traffic, placement: list[list[int]],
                      batch: int) -> Prediction:
    """The cost model's step for ``placement`` (board d holding ``placement[d]``)."""
    compute = [board.step_s[len(held) - 1] for board, held in zip(boards, placement)]
    return predict(compute, sent_bytes(traffic, placement, batch), links.latency_s, links.bytes_per_s,
                   traffic.input_bytes * batch, traffic.result_bytes * batch, links.burst)


def memory_needed(boards: list[BoardProfile], placement: list[list[int]]) -> list[int]:
    """Each board's free memory that ``placement`` needs."""
    return [board.peak_rss[len(held) - 1] + MEMORY_MARGIN_BYTES for board, held in zip(boards, placement)]


@dataclass(frozen=True)
class Candidate:
    placement: list[list[int]]
    prediction: Prediction
    memory: list[int]
    fits: bool

    @property
    def spec(self) -> str:
        return "/".join(",".join(map(str, held)) for held in self.placement)


def rank(boards: list[BoardProfile], links: Links, traffic: Traffic, groups: int, batch: int) -> list[Candidate]:
    """Every placement on ``boards``, fastest first; those that do not fit every board's memory last."""
    out = []
    for placement in placements(groups, len(boards)):
        if any(b.step_s[len(held) - 1] is None for b, held in zip(boards, placement)):
            continue  # a board that could not run that many groups
        memory = memory_needed(boards, placement)
        fits = all(m <= b.memory_available for m, b in zip(memory, boards))
        out.append(Candidate(placement, predict_placement(boards, links, traffic, placement, batch), memory, fits))
    return sorted(out, key=lambda c: (not c.fits, c.prediction.step_s))


@dataclass
class BoardsPlan:
    """``plan.json``, beside the export it chose: the hosts in device order, the placement, the run's batch and
    threads, the prediction (ms) and each device's memory need; the measurements it came from."""

    export_id: str
    hosts: list[str]
    placement: list[list[int]]
    batch: int
    threads: int | None  # None: each board's cores
    predicted: dict[str, float]  # step_ms, compute_ms, transfer_ms
    memory: list[int]
    candidates: list[dict] = field(default_factory=list)  # spec, predicted step_ms, fits
    boards: list[dict] = field(default_factory=list)
    links: dict = field(default_factory=dict)
    format: str = FORMAT

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BoardsPlan:
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            return cls(**data)
        except (OSError, ValueError, TypeError) as e:
            raise PlanError(f"{path} is not a plan written by `decnn plan --hosts` ({e})") from None


def milliseconds(prediction: Prediction) -> dict[str, float]:
    return {"step_ms": prediction.step_s * 1e3, "compute_ms": prediction.compute_s * 1e3,
            "transfer_ms": prediction.transfer_s * 1e3}
