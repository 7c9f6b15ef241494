"""Emulated edge devices on one machine, for the benchmark, the planner and the tests (no torch; root for the
namespaces and cgroups): ``links`` (hosts in network namespaces on a bridge, each link shaped by tc's tbf, and the
processes started there), ``netns`` (the ip/tc commands), ``rates`` (tc's rate forms), ``tcp_probe`` (a TCP
throughput probe run inside them), ``quota`` (a cgroup CPU quota of a fraction of a core: a slower board) and
``faults`` (test-only fault injection: a peer that dies, hangs, stops, falls behind or corrupts what it gets).
"""
