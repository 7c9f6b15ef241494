"""From a laptop to its boards over OpenSSH: ``decnn deploy`` and ``decnn plan --hosts``.

The laptop reaches every board with the system's ``ssh`` and ``scp`` (``hosts``), learns what each board is
(``facts``: Python, CPU architecture, free memory and disk), installs the device environment in a venv there
(``environment``: ``decnn[edge]`` from the package index where the board reaches it, otherwise from wheels
fetched here for its platform), copies each board only its device's files, skipping what is already there by
content hash (``files``), and starts the device runtime across the boards with the MPICH wheel's ``mpiexec``,
its proxies reached over ssh (``mpmd``). ``deploy`` is the ``decnn deploy`` job. ``profile_set`` (laptop, torch)
exports the graphs a board times, ``measure`` (board, no torch) times them with ONNX Runtime, ``links`` (boards,
under mpiexec) measures every link, ``placement`` chooses where the groups go, ``plan`` is ``decnn plan --hosts``.
What runs on a board (``measure``, ``links``) imports nothing that imports torch.
"""
