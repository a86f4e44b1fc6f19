"""Interoperability: export a model file to ONNX behind a parity gate, and use the .onnx without torch.

Importing this package imports nothing heavy; :mod:`imgclf.loading` (``imgclf.load``) picks the loader
from a file's first bytes, :mod:`imgclf.interop.onnx_export` writes an .onnx (needs torch and onnx) and
:mod:`imgclf.interop.onnx_runtime` runs one with onnxruntime and NumPy only.

Usage::

    from imgclf.interop.onnx_export import export_onnx
    export_onnx("malaria.imgclf", "malaria.onnx")
    clf = imgclf.load("malaria.onnx")            # an OnnxClassifier: same predict API, no torch
"""
