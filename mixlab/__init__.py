"""mixlab's stable public API: mixup-style mixing, training, models, checkpoints.

Import from here (``from mixlab import mix, MixSpec``) rather than from
``app.…``: ``app`` and ``worker`` hold the service's internals, which may move
or be renamed between releases, while the names below keep working.
``import mixlab`` loads the torch side only (no FastAPI, SQLAlchemy or Celery),
so it is cheap in a notebook; the REST client is ``mixlab.client.MixlabClient``.

- mixing: ``mix``, ``MixSpec``, ``Mixed``, ``METHODS``, ``register_method``,
  ``register_op``, ``sample_beta``, ``embedding_mixup``;
- training: ``train``, ``TrainSpec``, ``ModelSpec``, ``build_model``;
- checkpoints: ``load_checkpoint`` (a run's self-contained safetensors file).
"""

from mixlab import _internals

_internals.check()  # a user's own ``app`` folder would otherwise be imported in its place

from app import __version__  # noqa: E402
from app.ml.checkpoint import load_checkpoint  # noqa: E402
from app.ml.mixing import (  # noqa: E402
    METHODS,
    Mixed,
    MixSpec,
    embedding_mixup,
    mix,
    register_method,
    register_op,
    sample_beta,
)
from app.ml.models import ModelSpec, build_model  # noqa: E402
from app.ml.training import TrainSpec, train  # noqa: E402

__all__ = [
    "METHODS",
    "MixSpec",
    "Mixed",
    "ModelSpec",
    "TrainSpec",
    "__version__",
    "build_model",
    "embedding_mixup",
    "load_checkpoint",
    "mix",
    "register_method",
    "register_op",
    "sample_beta",
    "train",
]
