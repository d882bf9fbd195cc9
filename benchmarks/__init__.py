"""Benchmarks for onnxcam (not part of the installed package).

``python -m benchmarks.speed`` measures the latency, throughput and peak memory of the exported
explaining graph against the plain onnxruntime forward and the PyTorch CAM libraries; see
``benchmarks/README.md``.
"""
