"""Measuring split inference against its alternatives, and reading the results.

``__main__`` is ``decnn bench``'s command line and ``side_by_side`` its run: ``configurations`` lists the
configurations, ``infer_runs`` runs one (over :mod:`decnn.emulation`'s links where asked), ``edge`` the device
runtime's, ``summary`` summarises them; ``predict`` takes each split's predicted latency from :mod:`decnn.plan`;
``compare`` and ``paper`` read runs back as a table, a plot and the report's tables. Stand-alone measurements:
``data_loading``, ``link_check``, ``kernels``, ``onnx_vs_torch``, ``shard_memory``, ``edge_memory``, ``quantized``,
``lost_devices`` (``decnn bench elastic``), ``boards`` with ``validate_boards``, and ``scaling`` (``one_branch``
holds what the single-branch ones share).
"""
