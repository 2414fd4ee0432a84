"""Privacy: differential-privacy accounting and leakage attacks on what a server sees.

``accounting`` turns a run's DP mechanism (noise multiplier, sampling, rounds) into epsilon at
a delta with dp-accounting; ``attacks`` reconstructs, labels, links and tests membership from
updates and models. May import numpy, torch, scipy and dp_accounting; ``fedhar.models`` and
the top level. Flower's DP wrappers and mods are composed in ``experiments.compose``.
"""
