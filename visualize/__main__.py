"""Draw a model's graph from the command line.

    python -m visualize alexnet --out alexnet.svg
    python -m visualize alexnet --out alexnet_grad.svg --backward --collapse
    python -m visualize cnn4 --out cnn4.png --backward
    python -m visualize alexnet --out alexnet_layers.svg --annotated --summary

    python -m visualize explore alexnet-small --data digits --out explorer.html
    python -m visualize explore net.onnx --data synthetic:10 --out net.html

The command builds the course's models by name (alexnet, alexnet-small, cnn4)
or reads an ONNX image classifier: that is the models package's business, so
its code is :mod:`models.draw` and this entry point only hands over to it.
The visualize library (every module but this one) imports nothing of models.
"""
import sys

from models.draw import main  # noqa: F401 - ``from visualize.__main__ import main`` keeps working

if __name__ == "__main__":
    sys.exit(main())
