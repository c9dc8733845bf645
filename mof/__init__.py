"""mof: Meta-Optimized Frames for text-to-video retrieval.

``mof.models``, ``mof.loss``, ``mof.metrics`` and ``mof.bilevel`` depend only on torch/numpy
(and transformers/timm for the backbones); the trainer, evaluator and exporter join them to the
``pipeline`` package.
"""

__version__ = "0.1.0"
