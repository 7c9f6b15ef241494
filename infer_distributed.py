"""Split inference of a decoupled CNN across devices (one process per device): ``decnn infer`` as a script.

    python infer_distributed.py --random-init --devices 2 --verify
    torchrun --nproc-per-node 2 infer_distributed.py --random-init

See ``python infer_distributed.py --help``; the work is done in ``decnn.inference``.
"""

import sys

from decnn.jobs.infer import main

if __name__ == "__main__":
    sys.exit(main(prog="infer_distributed.py"))
