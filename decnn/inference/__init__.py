"""Split inference: DeCNN branches on several devices, and the baselines they are compared with.

``__main__`` is ``decnn infer`` (and ``infer_distributed.py``); ``runner`` runs one rank; ``mode`` is what every mode
implements (and where a rank's time goes); ``branch_mode`` joins a
branch with the communicator (one all-to-all per shuffle point); ``baselines`` has the single-process and
data-parallel modes, ``pipeline_mode`` the layer-wise split; ``report`` writes JSON, TensorBoard and a
table.
"""
