"""The one decode + preprocess path: bytes, path, PIL image or array → uint8 RGB → model input.

``read`` bounds every read and decodes safely (orientation, the RGB rule); ``preprocess`` resizes, scales
and makes tensors. Training, evaluation, prediction and exports all go through these two modules.

Usage::

    from imgclf.images.preprocess import preprocess
    x = preprocess(["a.png"], spec)
"""
