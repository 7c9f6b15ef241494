"""Split inference: DeCNN branches on several devices, and the baselines they are compared with.

``settings`` checks a run's settings (``decnn infer``'s command line is :mod:`decnn.jobs.infer`); ``runner`` runs one
rank; ``mode`` is what every mode implements (and where a rank's time goes); ``branch_mode`` joins a branch with the
communicator (one all-to-all per shuffle point); ``baselines`` has the single-process and data-parallel modes,
``pipeline_mode`` the layer-wise split, ``spatial_mode`` the peers' spatial splits; ``report`` writes JSON,
TensorBoard and a table.
"""
