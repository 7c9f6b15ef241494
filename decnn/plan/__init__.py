"""Planning a split: profile the devices and links at hand (``profile``), predict every way to run with the
cost model (``costmodel``) and pick the best (``planner``); ``hetero`` emulates uneven devices."""
