"""The command lines' argument parser: a bad option is one line and exit 1, like every other
error of ``wandb-mirror``, not argparse's usage block and exit 2.

Scripts and people then need to know one rule (the README's "one line on stderr, exit 1"), and
the line still says where to look: ``--help`` shows the usage argparse would have printed.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_ERROR = 1


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (and its subcommands' errors) are one line, exit 1."""

    def error(self, message: str) -> NoReturn:
        first = message.splitlines()[0] if message else "bad arguments"
        self.exit(EXIT_ERROR, f"{self.prog}: error: {first} (see {self.prog} --help)\n")
