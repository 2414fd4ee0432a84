"""The fast simulation runtime: Flower's Message API on a pool of long-lived Ray actors.

``grid`` is a Flower `Grid` that delivers a round's messages in batches to ``worker`` actors,
each of which keeps one ClientApp (with its mods) alive for the whole run, and holds every
node's context on the server between rounds. ``launch`` starts Ray (locally or on an
existing cluster, ``runtime.ray_address``), the pool and the grid, and serves a prepared run
on them. Strategies and ClientApps are unchanged: the same ones run under Flower's
``run_simulation`` (``runtime.backend=flower``) and ``flwr run``. May import everything.
"""
