"""``python -m decnn JOB ...``: the front door, as ``decnn JOB ...`` (what torchrun's ``-m`` starts too)."""

from decnn.cli import main

if __name__ == "__main__":
    main()
