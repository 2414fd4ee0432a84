"""Deployment evaluation: the int8 model on a device, streaming, smoothing, offload, consensus."""
