"""Accuracy-aware int8: image splits, a switchable simulation for per-layer sensitivity, the fallback search.

The targets still do the quantizing (targets/pt2e.py builds the PT2E quantizers, targets/onnx.py
calls onnxruntime); this package decides *what* to quantize and says what that cost.
"""
