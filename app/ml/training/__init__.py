"""Training: one loop (``loop``) that every task runs through, its recipe
(``spec``, ``recipe``, ``augment``), clock and checkpoints (``clock``,
``checkpoints``), normalisation and evaluation; ``train`` trains a classifier
(``classify``), ``app.ml.retrieval.train_retrieval`` a two-tower retriever.
"""

from app.ml.training.classify import train
from app.ml.training.evaluation import evaluate, predict
from app.ml.training.hooks import Progress, TrainHooks, TrainResult
from app.ml.training.spec import EarlyStopping, TrainSpec

__all__ = ["EarlyStopping", "Progress", "TrainHooks", "TrainResult", "TrainSpec", "evaluate",
           "predict", "train"]
