"""Planning a split: profile the devices and links at hand (``profile``), predict every way to run with the cost model
(:mod:`decnn.common.costmodel`; ``spatial`` for the peers' splits) and pick the best (``planner``); ``hetero``
emulates uneven devices.
"""
