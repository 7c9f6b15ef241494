"""Training: typed YAML config, the trainer loop, atomic checkpoints, the TensorBoard logger, transforms, meters.

``config`` loads and checks a run's settings; ``builders`` resolves its parts once; ``trainer`` runs the loop
(DDP under torchrun); ``evaluate`` scores a model or checkpoint;
``checkpoint`` writes and reads run state atomically; ``logger`` is TensorBoard or a null logger.
"""
