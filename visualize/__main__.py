"""Entry point of ``python -m visualize`` (usage: :mod:`models.draw`).

The command builds the course's models by name (alexnet, alexnet-small, cnn4)
or reads an ONNX image classifier: that is the models package's business, so
its code, and its usage text, is :mod:`models.draw`; this entry point only
hands over to it. The visualize library (every module but this one) imports
nothing of models.
"""
import sys

from models.draw import main  # noqa: F401 - ``from visualize.__main__ import main`` keeps working

if __name__ == "__main__":
    sys.exit(main())
