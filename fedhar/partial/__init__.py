"""Partial models: clients train sub-models of one global model.

The one width grid and the width policies that assign a client its width each round
(``widths``), sub-model specs with extraction and scattering between sub and global
coordinates (``spec``), masked aggregation, where each element averages over the clients
that trained it (``aggregate``), and scoring every nested width of a global model
(``evaluate``). May import torch, ``fedhar.models`` and ``fedhar.train``; never Flower.
"""
