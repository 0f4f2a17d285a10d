"""wandb-mirror: a complete, queryable local copy of Weights & Biases projects."""

from mirror.errors import CommError, MirrorError

__version__ = "0.1.0"

__all__ = ["Api", "CommError", "MirrorError", "__version__"]


def __getattr__(name: str):  # noqa: ANN202 - lazy so that `import mirror` stays cheap for the CLI
    if name == "Api":
        from mirror.query.api import Api

        return Api
    raise AttributeError(name)
