"""The distributed plumbing below split inference, planning, the benchmark and training (torch.distributed);
knows nothing about models.

One job per module: ``process`` (what a process knows about its launch, the worker server; no torch),
``launcher`` (N processes through torch's elastic launcher), ``pinning`` (threads and cores per process),
``watchdog`` (stopped processes made to take a pending SIGTERM), ``communicator`` (collectives with a timeout
that name the failed peer).
"""
