"""The side-by-side benchmark of split inference (``python -m decnn.bench``)."""
