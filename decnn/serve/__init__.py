"""Serving: ``decnn.split`` (``split_model``: the caller's client) and the persistent workers behind it (``worker``);
the elastic split (``elastic_model``, ``device``: ``decnn device``, ``requests``, ``timeline``).
"""
