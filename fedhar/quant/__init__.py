"""Quantization: fake-quant QAT layers with quantization-aware gradient scaling (``qat``) and
simulated integer inference of a QAT model (``integer``). May import torch and the top-level
``fedhar.train`` and ``fedhar.metrics``; never Flower.
"""
