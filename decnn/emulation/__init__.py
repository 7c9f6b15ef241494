"""Emulated boards on one machine: ``quota`` (a cgroup CPU quota of a fraction of a core) and ``boards`` (N
devices, each a process in a quota of its own, over loopback or an emulated link, running ``decnn edge`` or
``decnn infer``). Needs root; imports nothing heavy."""
