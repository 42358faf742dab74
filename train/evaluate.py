"""`python -m train.evaluate`: the command is `train.cli.evaluate`."""

from train.cli.evaluate import main

if __name__ == "__main__":
    main(prog_name="python -m train.evaluate")
