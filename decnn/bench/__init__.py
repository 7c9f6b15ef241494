"""Measuring split inference against its alternatives, and reading the results.

``__main__`` runs the side-by-side benchmark (``decnn bench``): ``configurations`` lists the
configurations, ``run`` runs one (over :mod:`decnn.distributed`'s emulated links where asked), ``summary``
summarises them; ``predict`` takes each split's predicted latency from :mod:`decnn.plan`; ``compare``
and ``paper`` read runs back as a table, a plot and the report's tables; ``data_loading``, ``link_check``,
``kernels``, ``onnx_vs_torch`` and ``shard_memory`` are stand-alone measurements (``one_branch`` holds what
the single-branch ones share).
"""
