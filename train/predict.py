"""`python -m train.predict`: the command is `train.cli.predict`."""

from train.cli.predict import main

if __name__ == "__main__":
    main(prog_name="python -m train.predict")
