"""`python -m train`: the command is `train.cli.train`."""

from train.cli.train import main

if __name__ == "__main__":
    main(prog_name="python -m train")
