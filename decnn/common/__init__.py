"""What training, inference, deployment and the benchmark share: ``checkpoint`` (run state written and read
atomically), ``logger`` (TensorBoard without torch, or a null logger; the log root's HPARAMS experiment) and
``meters`` (top-k counts, progress lines)."""
