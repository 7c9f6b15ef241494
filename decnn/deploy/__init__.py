"""Deployment: a trained model as what devices load.

``shards`` writes and reads per-device shards (each device's weights and exchange plans); ``export`` is ``decnn
export`` (shards, and each device's ONNX graphs); ``onnx_branch`` runs a device's graphs with ONNX Runtime under the
PyTorch runtime; ``quantize`` turns them into int8 graphs; ``spatial`` exports the peers' spatial splits. The device
runtime that runs them with no torch at all is :mod:`decnn.edge`.
"""
