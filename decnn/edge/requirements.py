"""``python -m decnn.edge.requirements``: the packages a device needs beside decnn (its ``edge`` extra), one per
line, so that ``pip install $(python -m decnn.edge.requirements)`` completes a ``pip install --no-deps`` of
decnn without bringing torch."""

from __future__ import annotations

import re
from importlib.metadata import requires


def edge_requirements() -> list[str]:
    """The requirements of decnn's ``edge`` extra, as installed decnn's metadata lists them."""
    marker = re.compile(r"""\s*;\s*extra\s*==\s*['"]edge['"]\s*$""")
    return [marker.sub("", r) for r in requires("decnn") or [] if marker.search(r)]


if __name__ == "__main__":
    print("\n".join(edge_requirements()))
