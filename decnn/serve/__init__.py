"""Serving: ``decnn.split`` (``split``: the caller's client) and the persistent workers behind it (``worker``)."""
