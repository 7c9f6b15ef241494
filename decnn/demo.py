"""``make demo``: the project end to end on a small real dataset."""

from decnn.model_table import main as model_table


def main() -> None:
    print("== DeCNN model zoo (params and GFLOPs at 64x64, whole model and per device) ==")
    model_table([])


if __name__ == "__main__":
    main()
