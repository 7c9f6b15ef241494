"""Training: typed YAML config, the trainer loop, evaluation, transforms.

``config`` loads and checks a run's settings; ``builders`` resolves its parts once; ``trainer`` runs the loop
(DDP under torchrun); ``evaluate`` scores a model or checkpoint; ``transforms`` are the train/eval presets.
Checkpoints, the TensorBoard logger and the meters, which inference and deployment use too, are in
:mod:`decnn.common`.
"""
