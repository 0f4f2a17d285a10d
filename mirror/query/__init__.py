"""Offline reads: MongoDB filters parsed once (``filters``), compiled to SQL (``sql``) or evaluated
in Python as the test oracle (``evaluate``), and the ``wandb.Api`` look-alike (``api``)."""
