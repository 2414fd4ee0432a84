"""Leakage attacks, each on what a real adversary sees.

An honest-but-curious server sees each client's update (``observe``: the delta a client sends,
through a defense in ``fedhar.privacy.defenses``), or only their sum under secure aggregation.
``inversion`` reconstructs sensor windows from an update (DLG / Inverting Gradients);
``labels`` reads labels from the head's update (iDLG for one window, LLG-style counts for a
batch); ``membership`` tests whether a window trained the global model (loss threshold, LiRA);
``reidentify`` links windows to users through the model's embeddings.
"""
