"""Talking to W&B: credentials, the GraphQL client with its retries, and the documents it sends.

Only ``mirror.sync`` uses this package; readers (``query``, ``serve``, the CLI's read commands)
never talk to W&B.
"""
