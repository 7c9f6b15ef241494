"""``python -m decnn.cluster.links`` under mpiexec, one rank per board: every link between the boards, measured
with MPI ping-pongs (:func:`decnn.edge.profile.measure_links`); rank 0 prints them as one JSON line."""

from __future__ import annotations

import json
import sys

from decnn.edge.device_run import as_device
from decnn.edge.profile import measure_links
from decnn.edge.transport import MpiComm

TIMEOUT_S = 60.0


def measure(comm: MpiComm) -> None:
    latency, rate, burst = measure_links(comm)
    if comm.rank == 0:
        print(json.dumps({"latency_s": latency, "bytes_per_s": rate, "burst": burst}), flush=True)


if __name__ == "__main__":
    sys.exit(as_device(TIMEOUT_S, measure))
