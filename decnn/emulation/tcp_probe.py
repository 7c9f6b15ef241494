"""A TCP throughput probe between two emulated hosts (:meth:`EmulatedLink.measure_bps` runs it in each).

    python -m decnn.emulation.tcp_probe receive ADDRESS NBYTES   # prints "ready", then bits/s
    python -m decnn.emulation.tcp_probe send ADDRESS NBYTES

The receiver times the transfer from its first byte to its last, so connection set-up is not counted; it
acknowledges with one byte so that the sender returns only after the last byte arrived.
"""

from __future__ import annotations

import socket
import sys
import time

PORT = 5201  # inside the namespaces only
_CHUNK = 1 << 20


def receive(address: str, nbytes: int) -> float:
    """Accept one connection on ``address``, read ``nbytes``; return the bits/s from first to last byte."""
    with socket.create_server((address, PORT)) as server:
        print("ready", flush=True)
        conn, _ = server.accept()
        with conn:
            got, first = 0, None
            while got < nbytes:
                chunk = conn.recv(_CHUNK)
                if not chunk:
                    break
                first = first or time.perf_counter()
                got += len(chunk)
            if got < nbytes:
                raise SystemExit(f"received {got} of {nbytes} bytes")
            bps = got * 8 / (time.perf_counter() - first)
            conn.sendall(b"k")
    return bps


def send(address: str, nbytes: int, timeout: float = 60.0) -> None:
    """Send ``nbytes`` to the receiver on ``address`` and wait for its acknowledgement."""
    with socket.create_connection((address, PORT), timeout=timeout) as conn:
        conn.sendall(b"x" * nbytes)
        conn.recv(1)


def main(argv: list[str]) -> None:
    role, address, nbytes = argv[0], argv[1], int(argv[2])
    if role == "receive":
        print(receive(address, nbytes), flush=True)
    else:
        send(address, nbytes)


if __name__ == "__main__":
    main(sys.argv[1:])
