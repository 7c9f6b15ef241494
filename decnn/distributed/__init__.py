"""The distributed plumbing below split inference, planning, the benchmark and training; knows nothing about models.

One job per module: ``process`` (what a process knows about its launch, dying with its parent, the worker
server; no torch), ``launcher`` (N processes through torch's elastic launcher), ``pinning`` (threads and
cores per process), ``watchdog`` (stopped processes made to take a pending SIGTERM), ``communicator``
(collectives with a timeout that name the failed peer), ``faults`` (test-only fault injection),
``procfs`` (the few /proc reads they share), and the emulated edge links: ``rates`` (tc's rate forms),
``netns`` (ip/tc commands, namespaces), ``emulated_link`` (hosts on a shaped bridge and the processes
started there), ``tcp_probe`` (a TCP throughput probe run inside them).

Importing this package loads nothing heavy: ``process``, ``rates`` and ``procfs`` need no torch.
"""
