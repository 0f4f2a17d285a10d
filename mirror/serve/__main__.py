"""``python -m mirror.serve --db PATH --port N [--api-key K ...] [--fault-... ...]``."""

import sys

from mirror.serve.server import main

sys.exit(main())
