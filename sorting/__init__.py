"""textile-sorter: sort post-consumer textiles by fibre and colour with cameras.

Sub-packages: ``sorting.datasets`` (manifests, importers, synthetic world, preprocessing),
``sorting.models`` (registry, multi-head model, checkpoints, ONNX export/quantization),
``sorting.training`` (train/evaluate loops, metrics, tracking), ``sorting.serving``
(the conveyor loop) and ``sorting.cli`` (the thin ``textile-sorter`` command).
"""

__version__ = "0.1.0"
