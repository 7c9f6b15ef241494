"""Train a (decoupled) ResNet on Tiny-ImageNet, or evaluate a checkpoint: ``decnn train`` as a script.

    python train.py --config configs/decnn_resnet34_g4_x1.5.yaml [section.key=value ...]
    torchrun --standalone --nproc-per-node 4 train.py --config configs/resnet34.yaml

See ``python train.py --help``; the work is done in ``decnn.train``.
"""

import sys

from decnn.train.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
