"""mnist-serving: train, export and serve an MNIST classifier.

This package root holds what every component shares and nothing heavy: the model
contract, the IDX file format and the canonical MNIST loader (numpy only).
"""

__version__ = "0.1.0"
