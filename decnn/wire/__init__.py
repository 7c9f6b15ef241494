"""The contract between an export and the devices, and between the two runtimes (no torch): what an export's
folder holds (``export_format``), which device holds which channel groups (``placement``), how an exchange
lays activations on the wire (``exchange``), and the spatial splits' tiles and programs (``spatial``). Each
runtime implements only how its own arrays meet it.
"""
