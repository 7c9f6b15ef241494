"""The parser every ``decnn <job>`` starts from: one look for every job's ``--help``.

A job's module docstring is its help: the first line the description, the lines indented by four spaces
the examples (shown under ``examples:``). Imports nothing heavy, so a command line can check its arguments
before torch loads.
"""

from __future__ import annotations

import argparse


def job_parser(job: str, doc: str, prog: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """The ``argparse`` parser of ``decnn <job>`` (``prog`` overrides the name, e.g. for a root script)."""
    lines = doc.strip().splitlines()
    examples = [line[4:] for line in lines if line.startswith("    ") and line.strip()]
    return argparse.ArgumentParser(
        prog=prog or f"decnn {job}",
        description=lines[0],
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples) if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
