"""The commands `python -m train`, `train.evaluate` and `train.predict` and the options they
share; the entry modules train/__main__.py, evaluate.py and predict.py call them."""
