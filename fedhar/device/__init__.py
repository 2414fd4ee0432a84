"""The simulated wearable: what a device is and what it can do around local training.

Device profiles and the fleet's device assignment (``profiles``), the sensor model that
records a user's windows as a device instance would (``sensors``), the SRAM and flash model of
one training step (``memory``), the planner that picks the most capable plan that fits
(``planner``), simulated compute, radio and energy costs (``costs``), and ``local_update``,
which turns a device, a model and the server's instructions into one frozen plan of a local
update. May import torch, numpy, pyyaml and ``fedhar.models``, ``fedhar.quant``,
``fedhar.partial`` (the width grid) and ``fedhar.train``; never Flower.
"""
