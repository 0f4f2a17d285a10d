"""A W&B-compatible GraphQL endpoint over the mirror, so unmodified ``wandb.Api`` code runs offline.

``app`` (WSGI: routing, auth, faults), ``executor`` (one GraphQL request), ``schema`` (W&B's SDL
plus resolvers), ``resolvers``/``mutations``/``history`` (fields over the store), ``faults``
(testing options) and ``server`` (waitress, command-line options).
"""
