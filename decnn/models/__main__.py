"""``python -m decnn.models``: the model table (see decnn.models.table)."""

from decnn.models.table import main

main()
