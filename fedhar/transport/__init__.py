"""What travels between devices and the server, below Flower's records.

The update codec (``codec``: per-channel quantized, optionally sparse deltas and states),
its byte framing (``payload``), signed and encrypted envelopes (``envelope``) and the key
material they use (``keys``: server and device key pairs, the server's registry of device
public keys). May import cryptography, numpy and torch; never Flower.
"""
