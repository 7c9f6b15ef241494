"""Running a split on one device, whatever its runtime: the steps of DeCNN's branches (``branch``) and of the
peers' spatial splits (``spatial``), over a runtime's arrays, graphs and transport (torch tensors and gloo, or
numpy arrays, ONNX Runtime and MPI). No torch.
"""
