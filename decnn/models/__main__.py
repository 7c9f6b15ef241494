"""``python -m decnn.models``: the model table (see decnn.model_table)."""

from decnn.model_table import main

main()
