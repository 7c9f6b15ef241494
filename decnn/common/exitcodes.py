"""One exit-code convention for every entry point: 2 usage or input error, 1 runtime failure, 130 interrupt.

Errors are reported in one line (``error: ...``), an interrupt as ``interrupted``; no traceback for either.
Imports nothing heavy, so a command line can use it before torch is loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = 2
RUNTIME = 1
INTERRUPTED = 130


def run_main(
    main: Callable[[], int | None],
    usage_errors: tuple[type[BaseException], ...] = (),
    runtime_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``main`` and return its exit code: ``usage_errors`` give 2, ``runtime_errors`` 1, Ctrl-C 130.

    Other exceptions propagate (a traceback is the right report of a bug).
    """
    try:
        return main() or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    except usage_errors as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return USAGE
    except runtime_errors as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return RUNTIME
