"""``python -m decnn.models``, the same as ``decnn models``: the model table (see decnn.models.table)."""

import sys

from decnn.exitcodes import run_main
from decnn.models.table import main

sys.exit(run_main(main))
