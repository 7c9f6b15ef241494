"""``python -m decnn.inference``: the same command line as ``infer_distributed.py``."""

import sys

from decnn.inference.cli import main

sys.exit(main())
