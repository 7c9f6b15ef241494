"""What an elastic split did over time, as its caller saw it: the groups (periods) and the changes between them.

A period is one group of devices (one rendezvous round that served): its devices, its placement and the
latency of the calls it answered. A change is the step from one group to the next: the devices lost and
joined, the cause as the survivors saw it (which rank, which host, what happened) and how long no call was
answered across it. Times are seconds on the caller's clock from the split's start. No torch here.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

from decnn.common.timing import percentiles_ms

__all__ = ["Answer", "Timeline"]


@dataclass(frozen=True)
class Answer:
    """One call: its request id, when it was made and answered (caller's clock), the group that answered."""

    rid: int
    submitted_s: float
    answered_s: float
    epoch: int
    service_s: float  # rank 0's time for it, from taking the request to writing the answer
    images: int


@dataclass
class Timeline:
    """The groups (by epoch, as announced in the caller's store), their faults, and every answer."""

    groups: dict[int, dict] = field(default_factory=dict)
    faults: dict[int, list[dict]] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    checks: dict[int, dict] = field(default_factory=dict)  # per epoch, against the whole model (max_abs_diff, ...)
    start_wall: float = 0.0  # time.time() at the split's start: other processes' events on the same clock

    def add_group(self, epoch: int, group: dict | None, faults: list[str]) -> None:
        if group is not None:
            self.groups[epoch] = group
        if faults:
            self.faults[epoch] = faults

    def periods(self) -> list[dict]:
        out = []
        for epoch, group in sorted(self.groups.items()):
            mine = [a for a in self.answers if a.epoch == epoch]
            latency = percentiles_ms([a.answered_s - a.submitted_s for a in mine])
            out.append({
                "epoch": epoch,
                "devices": [d["device"] for d in group["devices"]],
                "placement": "/".join(",".join(map(str, dev)) for dev in group["placement"]),
                "answered": len(mine),
                "images": sum(a.images for a in mine),
                "first_answer_s": min((a.answered_s for a in mine), default=None),
                "last_answer_s": max((a.answered_s for a in mine), default=None),
                "latency_p50_ms": latency["p50"],
                "latency_p95_ms": latency["p95"],
                "service_p50_ms": percentiles_ms([a.service_s for a in mine])["p50"],
                **self.checks.get(epoch, {}),
            })
        return out

    def changes(self) -> list[dict]:
        """Each step from one group to the next; ``outage_s`` from the last answer before it to the first
        answer after it (None where either side answered nothing)."""
        periods, out = self.periods(), []
        for before, after in itertools.pairwise(periods):
            lost = [d for d in before["devices"] if d not in after["devices"]]
            joined = [d for d in after["devices"] if d not in before["devices"]]
            previous = [p["last_answer_s"] for p in periods if p["epoch"] < after["epoch"] and p["last_answer_s"]]
            gap = (after["first_answer_s"] - max(previous)
                   if previous and after["first_answer_s"] is not None else None)
            out.append({
                "epoch": after["epoch"],
                "devices_before": len(before["devices"]),
                "devices_after": len(after["devices"]),
                "lost": lost,
                "joined": joined,
                "cause": self.cause(before["epoch"], lost, joined),
                "outage_s": gap,
            })
        return out

    def cause(self, epoch: int, lost: list[str], joined: list[str]) -> str:
        """Why group ``epoch`` gave way: the device lost as its peers saw it (which rank, which host, what
        happened), or the device that joined."""
        faults = self.faults.get(epoch, [])
        if lost:
            named = [f for f in faults if f["missing"]]
            if not named:
                return f"{', '.join(lost)} lost" + (f": {what_happened(faults[0]['detail'])}" if faults else "")
            f = named[0]
            who = ", ".join(f"rank {rank} ({host})" for rank, host in f["missing"])
            return (f"{', '.join(lost)} lost: {who} {what_happened(f['detail'])}, in {f['where']}, "
                    f"seen by rank {f['seen_by']}")
        if joined:
            return f"{', '.join(joined)} joined: the agents re-rendezvoused to grow the group"
        return "re-formed on the same devices" + (f" after {what_happened(faults[0]['detail'])}" if faults else "")

    def to_dict(self) -> dict:
        return {"start_wall": self.start_wall, "periods": self.periods(), "changes": self.changes(),
                "answers": [asdict(a) for a in self.answers]}

    def table(self) -> str:
        """The periods and changes as console (and Markdown) tables."""
        lines = ["| group | devices | placement | answered | from (s) | to (s) | p50 (ms) | p95 (ms) | max abs Δ |",
                 "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        for p in self.periods():
            span = [f"{p[k]:.1f}" if p[k] is not None else "–" for k in ("first_answer_s", "last_answer_s")]
            diff = f"{p['max_abs_diff']:.1e}" if "max_abs_diff" in p else "–"
            lines.append(f"| {p['epoch']} | {', '.join(p['devices'])} | {p['placement']} | {p['answered']} | "
                         f"{span[0]} | {span[1]} | {p['latency_p50_ms']:.1f} | {p['latency_p95_ms']:.1f} | {diff} |")
        changes = self.changes()
        if changes:
            lines += ["", "| to group | devices | no answer for (s) | cause |", "|---:|---|---:|---|"]
            for c in changes:
                outage = f"{c['outage_s']:.1f}" if c["outage_s"] is not None else "–"
                lines.append(f"| {c['epoch']} | {c['devices_before']} → {c['devices_after']} | {outage} | "
                             f"{c['cause']} |")
        return "\n".join(lines)


def what_happened(detail: str) -> str:
    """A collective's failure in words: the peer's connection closed (its process died) or it went silent."""
    text = detail.lower()
    if "timed out" in text or "timeout" in text:
        return "did not answer within the timeout (hung, stopped or unreachable)"
    if any(word in text for word in ("reset", "closed", "refused", "broken pipe")):
        return "closed its connection (its process died)"
    return f"failed ({detail[:80]})"
