"""The device runtime: one device of a split with no torch in it.

ONNX Runtime runs the device's exported segments and head, numpy packs the channels and runs the exchange
codecs, and MPI (mpi4py; ``mpiexec`` launches, on one host or over a host list) carries the broadcast of the
input, one all-to-all per shuffle point and the reduce of the partial logits. It reads what ``decnn export
--onnx`` wrote (``manifest.json``, ``device<d>.plans.json``, the graphs), writes the same
:class:`~decnn.common.record.RunRecord` as the PyTorch runtime, and imports nothing that imports torch (a test runs
it with torch made unimportable).

``bundle`` reads a device's files; ``codec`` the wire formats; ``transport`` MPI with deadlines and naming
of a silent peer; ``exchange`` one shuffle point; ``split`` a step across the devices; ``run`` the timed run
of one rank (``python -m decnn.edge.device_run`` under ``mpiexec``); ``launch`` the ``decnn edge`` command.
"""
