"""The retrieval task: CLIP-style contrastive training of two towers, recall@K.

Pairs are the dataset's samples that have both modalities: sample i's
``query`` modality is matched with its own ``target`` modality, every other
sample of the batch is a negative.
Labels play no part in the loss (a retrieval dataset's classes, when it has
any, say nothing about which caption belongs to which image; same-class pairs
stay negatives, as in CLIP); the clean labels only feed the ``class_p1_*``
diagnostics.

Mixing (``mix_spec.method``):

- ``none``: symmetric InfoNCE on the batch.
- ``mixgen`` (Hao et al. 2022): the registry's ``mixgen`` op (image interpolated
  with the fixed ``mixgen_lam``, texts concatenated) builds mixed pairs, which
  **replace** the first quarter (``MIXGEN_SHARE``) of the shuffled batch, as the
  authors' code overwrites its first M rows, so a step costs what an unmixed
  one does; each is mixed with a partner drawn from the whole unmixed batch
  (theirs: row i with row i + M). ``prob`` < 1 skips whole batches (``lam_mode`` ``batch``) or
  single samples. Needs an image and a text modality.
- ``m3mix`` (m³-mix, Oh, So et al. NeurIPS 2023): after encoding, each pair's
  normalised query and target embeddings are mixed along the great circle
  (``app.ml.mixing.geodesic.slerp``, λ ~ Beta(α, α) by ``lam_mode``) and the
  mixes m_j serve as hard negatives in a second InfoNCE term, as in the
  authors' code: query i (and target i) against its own positive and every
  m_j, j ≠ i (m_i comes from the row's own pair), added to the plain loss
  times ``m3mix_weight``; gradients flow through the mixes. Samples that
  ``prob`` leaves unmixed (λ = 1) contribute no mix. From scratch the term
  slows the start (it pushes still-collapsed towers apart before they align):
  on AV-MNIST image→audio it trails ``none`` for ~15 epochs and matches it by 25.

Metrics (0-d device tensors until the one host sync per epoch), over the whole
split as the gallery, ``q2t`` = query→target, ``t2q`` = target→query:
``r{1,5,10}_{q2t,t2q}`` (share of queries whose own pair ranks in the top K;
ties count against it, so a collapsed model scores chance, not 1),
``mean_recall`` (mean of the six, the headline), ``loss`` (symmetric InfoNCE over
the split), ``class_p1_{q2t,t2q}`` (share of queries whose top-1 item has the
query's class; for multi-label data, a class in common). Epochs report
``train_loss``, ``temperature`` and ``val_*``; the end adds ``test_*``,
``test_mean_recall_{query,target}_noise`` (Gaussian noise of 0.1 train-std on
that side's float inputs; absent for text) and ``train_time_s``.
"""

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F
from torch import nn

from app.ml.data.prepared import PreparedDataset
from app.ml.device import autocast_dtype, resolve_device
from app.ml.mixing import MixSpec, draw_lam, mix
from app.ml.mixing.geodesic import slerp
from app.ml.models import ModelSpec
from app.ml.models.towers import DualEncoder, build_dual_encoder
from app.ml.models.weights import load_matching
from app.ml.resume import ResumePoint
from app.ml.training import normalization
from app.ml.training.augment import augment_batch
from app.ml.training.batches import categorical_columns, data_device, rows_to, vocab_sizes
from app.ml.training.checks import recipe_problems
from app.ml.training.hooks import TrainHooks, TrainResult
from app.ml.training.loop import Objective, run
from app.ml.training.spec import TrainSpec

RETRIEVAL_METHODS = ("none", "mixgen", "m3mix")
KS = (1, 5, 10)
MIXGEN_SHARE = 0.25
M3MIX_WEIGHT = 1.0
NOISE_STD = 0.1
DIRECTIONS = ("q2t", "t2q")
# the keys ``retrieval_metrics`` returns (``val_<name>`` each epoch)
METRIC_NAMES = (*(f"r{k}_{d}" for k in KS for d in DIRECTIONS),
                *(f"class_p1_{d}" for d in DIRECTIONS), "mean_recall", "loss")


def info_nce(query: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | float,
             hard: torch.Tensor | None = None, hard_valid: torch.Tensor | None = None,
             hard_weight: float = 1.0) -> torch.Tensor:
    """Symmetric InfoNCE of (N, D) unit embeddings whose row i are a pair: the mean
    of the cross-entropies of ``scale · query @ targetᵀ`` (rows) and of its
    transpose, the positive on the diagonal.

    With ``hard`` (N, D), m³-mix's term is added, times ``hard_weight``: the same
    two cross-entropies with the positive kept and every negative of row i
    replaced by ``hard[j]``, j ≠ i (``hard[i]`` is built from the row's own
    pair); ``hard_valid`` (N,) bool drops the ``hard`` rows that are False.
    """
    q, t = query.float(), target.float()
    n = q.shape[0]
    labels = torch.arange(n, device=q.device)
    logits = scale * q @ t.T
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    if hard is None:
        return loss
    h = hard.float()
    diagonal = torch.eye(n, dtype=torch.bool, device=q.device)
    dropped = ~diagonal
    if hard_valid is not None:
        dropped = dropped & ~hard_valid.bool()[None, :]
    positive = logits.diagonal()[:, None]
    hard_terms = []
    for side in (q, t):
        against = torch.where(diagonal, positive, scale * side @ h.T)
        hard_terms.append(F.cross_entropy(against.masked_fill(dropped, float("-inf")), labels))
    return loss + hard_weight * 0.5 * (hard_terms[0] + hard_terms[1])


def positive_ranks(sim: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """0-based rank of each row's positive (column ``offset + row``) among the
    row's columns; columns scoring equal to the positive rank ahead of it."""
    r = torch.arange(sim.shape[0], device=sim.device)
    pos = sim[r, offset + r]
    return (sim >= pos[:, None]).sum(dim=1) - 1


def recall_at_k(sim: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[int, torch.Tensor]:
    """Recall@K of a square similarity matrix whose positives are on the diagonal."""
    ranks = positive_ranks(sim)
    return {k: (ranks < k).float().mean() for k in ks}


def retrieval_metrics(query: torch.Tensor, target: torch.Tensor, *,
                      scale: torch.Tensor | float | None = None,
                      labels: torch.Tensor | None = None, ks: tuple[int, ...] = KS,
                      chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Both directions' recall@K over (N, D) unit embeddings whose row i are a
    pair, the similarity matrix built ``chunk`` rows at a time; with ``scale``
    also the split's InfoNCE ``loss``, with ``labels`` (class indices or multi-hot
    rows) the ``class_p1_*`` scores."""
    n = query.shape[0]
    if n == 0:
        raise ValueError("retrieval metrics need at least one pair")
    out: dict[str, torch.Tensor] = {}
    losses = []
    for direction, rows_emb, cols_emb in (("q2t", query, target), ("t2q", target, query)):
        ranks, class_hits, nll = [], [], []
        for start in range(0, n, chunk):
            sim = rows_emb[start:start + chunk].float() @ cols_emb.float().T
            ranks.append(positive_ranks(sim, start))
            if labels is not None:
                class_hits.append(_same_class(labels[sim.argmax(dim=1)],
                                              labels[start:start + chunk]))
            if scale is not None:
                r = torch.arange(sim.shape[0], device=sim.device)
                logits = scale * sim
                nll.append(torch.logsumexp(logits, dim=1) - logits[r, start + r])
        rank = torch.cat(ranks)
        for k in ks:
            out[f"r{k}_{direction}"] = (rank < k).float().mean()
        if labels is not None:
            out[f"class_p1_{direction}"] = torch.cat(class_hits).float().mean()
        if scale is not None:
            losses.append(torch.cat(nll).mean())
    out["mean_recall"] = torch.stack([out[f"r{k}_{d}"] for k in ks for d in DIRECTIONS]).mean()
    if scale is not None:
        out["loss"] = 0.5 * (losses[0] + losses[1])
    return out


def mixgen_batch(batch: dict[str, torch.Tensor], labels: torch.Tensor, spec: MixSpec,
                 generator: torch.Generator, num_classes: int, kinds: dict[str, str],
                 rows: int) -> dict[str, torch.Tensor]:
    """The batch with its first ``rows`` pairs replaced by MixGen pairs (the
    registry's ``mixgen``: each mixed with a partner drawn from the whole,
    unmixed batch); the other rows are the batch's own."""
    mixed = mix(batch, labels, spec, generator, num_classes, kinds=kinds)
    return {m: torch.cat([mixed.inputs[m][:rows], x[rows:]]) for m, x in batch.items()}


def _same_class(found: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Per row: the same class (class indices), or any class in common (multi-hot rows)."""
    if found.dim() == 2:
        return (found.bool() & wanted.bool()).any(dim=1)
    return found == wanted


Normalize = Mapping[str, Callable[[torch.Tensor], torch.Tensor]]


def _gather(inputs: Mapping[str, torch.Tensor], normalize: Normalize,
            idx: torch.Tensor | slice, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of each modality, on ``device``, normalised."""
    return {m: normalize[m](rows_to(x, idx, device)) for m, x in inputs.items()}


@torch.inference_mode()
def embed_split(model: DualEncoder, inputs: Mapping[str, torch.Tensor], normalize: Normalize,
                device: torch.device, batch_size: int, amp: torch.dtype | None, *,
                noise: Mapping[str, float] | None = None,
                generator: torch.Generator | None = None,
                codes: Mapping[str, list[int]] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit embeddings (float32, on ``device``) of a whole split's queries and
    targets, ``batch_size`` samples at a time; ``noise`` adds Gaussian noise of
    that std to a modality's normalised float inputs (not to the tabular
    category-code columns listed in ``codes``)."""
    model.eval()
    queries, targets = [], []
    total = next(iter(inputs.values())).shape[0]
    for start in range(0, total, batch_size):
        x = _gather(inputs, normalize, slice(start, start + batch_size), device)
        for m, std in (noise or {}).items():
            if std > 0 and x[m].is_floating_point():
                eps = std * torch.randn(x[m].shape, generator=generator, device=x[m].device,
                                        dtype=x[m].dtype)
                if (codes or {}).get(m):
                    eps[:, codes[m]] = 0.0  # type: ignore[index]
                x[m] = x[m] + eps
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            q, t = model(x)
        queries.append(q.float())
        targets.append(t.float())
    return torch.cat(queries), torch.cat(targets)


def _check(data: PreparedDataset, method: str, spec: TrainSpec, query: str,
           target: str) -> dict[str, str]:
    """The two modalities' kinds, after checking the request fits the dataset."""
    if spec.batch_size < 2:
        raise ValueError("training.batch_size: retrieval needs at least 2 pairs per batch "
                         "(the other pairs are the negatives)")
    available = ", ".join(data.inputs)
    for field, name in (("query", query), ("target", target)):
        if name not in data.inputs:
            raise ValueError(f"retrieval.{field}: {name!r} is not a modality of the dataset "
                             f"(it has {available})")
    if query == target:
        raise ValueError("retrieval.target: must differ from retrieval.query")
    if method not in RETRIEVAL_METHODS:
        raise ValueError(f"augmentation.method: the retrieval task supports "
                         f"{', '.join(RETRIEVAL_METHODS)}, not {method!r}")
    kinds = {m: data.modality_kinds.get(m, m) for m in (query, target)}
    if method == "mixgen" and sorted(kinds.values()) != ["image", "text"]:
        raise ValueError("augmentation.method: mixgen needs an image and a text modality as "
                         f"query and target (got {kinds[query]} and {kinds[target]})")
    for split in ("train", "val", "test"):
        need = 2 if split == "train" else 1
        if paired_rows(data, split, query, target).numel() < need:
            raise ValueError(f"dataset: the {split} split needs at least {need} sample(s) "
                             f"with both {query} and {target} for retrieval")
    return kinds


def paired_rows(data: PreparedDataset, split: str, query: str, target: str) -> torch.Tensor:
    """Indices of the split's samples that have both modalities: a sample lacking
    one has no pair to retrieve (its stored values are placeholders)."""
    rows = data.split_indices(split)
    both = data.presence(query) & data.presence(target)
    return rows[both[rows]]


def train_retrieval(data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
                    spec: TrainSpec, hooks: TrainHooks | None = None, *, query: str,
                    target: str, m3mix_weight: float = M3MIX_WEIGHT,
                    resume: ResumePoint | None = None,
                    init_weights: Mapping[str, torch.Tensor] | None = None) -> TrainResult:
    """Train a two-tower retrieval model from ``query`` to ``target`` on ``data``
    with ``mix_spec.method`` none, mixgen or m3mix (see the module docstring);
    ``m3mix_weight`` scales m³-mix's hard-negative term.

    Seeded like ``app.ml.training.train``: the global RNG is seeded from
    ``spec.seed`` inside a forked RNG state; ``resume`` carries a run on after
    an earlier attempt's epoch, and ``init_weights`` start the towers (by name and
    shape, reported in ``TrainResult.init``), as in ``app.ml.training.train``.
    """
    if not (math.isfinite(m3mix_weight) and m3mix_weight >= 0):
        raise ValueError("retrieval.m3mix_weight: must be a finite number >= 0")
    if spec.world_size != 1:  # in-batch negatives would shrink to each rank's share
        raise ValueError("training.world_size: retrieval trains on one process")
    kinds = _check(data, mix_spec.method, spec, query, target)
    for field, problem in recipe_problems(spec, METRIC_NAMES, list(kinds.values())):
        raise ValueError(f"training.{field}: {problem}")
    device = resolve_device(spec.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        objective = RetrievalObjective(data, model_spec, mix_spec, spec, device, query, target,
                                       kinds, m3mix_weight)
        match = (load_matching(objective.model, init_weights) if init_weights is not None
                 else None)
        # no calibration: a retriever's temperature is learned (reported per epoch)
        recipe = replace(spec, calibration="none")
        result = run(objective, recipe, hooks or TrainHooks(), device, objective.home, resume)
    result.init = match.to_json() if match is not None else None
    return result


class RetrievalObjective(Objective):
    """Two towers trained with InfoNCE (and mixgen or m3mix) in the shared loop."""

    def __init__(self, data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
                 spec: TrainSpec, device: torch.device, query: str, target: str,
                 kinds: dict[str, str], m3mix_weight: float) -> None:
        self.spec, self.device, self.mix_spec = spec, device, mix_spec
        self.query, self.target, self.kinds = query, target, kinds
        self.m3mix_weight, self.num_classes = m3mix_weight, data.num_classes
        self.amp = autocast_dtype(device)
        modalities = [query, target]
        inputs_all = {m: data.inputs[m] for m in modalities}
        self.home = data_device([*inputs_all.values(), data.labels], device)
        self.inputs = {m: x.to(self.home) for m, x in inputs_all.items()}
        labels = data.labels.to(self.home)
        self.clean = data.clean_labels.to(device)
        train_rows, val_rows, self.test_rows = (paired_rows(data, s, query, target).to(self.home)
                                                for s in ("train", "val", "test"))
        self.train_inputs = {m: x[train_rows] for m, x in self.inputs.items()}
        self.train_labels = labels[train_rows]
        categorical = categorical_columns(data, modalities)
        self.codes = {m: sorted(columns) for m, columns in categorical.items()}
        self.normalize = {m: normalization.fit(kinds[m], x, device, codes=self.codes.get(m))
                          for m, x in self.train_inputs.items()}
        self.n_train = int(self.train_labels.shape[0])
        shapes = {m: tuple(x.shape[1:]) for m, x in inputs_all.items()}
        vocab = vocab_sizes(data, modalities)
        self.model: DualEncoder = build_dual_encoder(model_spec, query, target, shapes, kinds,
                                                     vocab, categorical).to(device)
        # CLIP leaves the temperature out of weight decay (it would pull 1/τ towards 1)
        self.no_decay = ("logit_scale",)
        self.headline = "mean_recall"
        self.metadata = {
            "task": "retrieval", "query": query, "target": target,
            "retrieval_mix": mix_spec.method, "model_spec": json.dumps(asdict(model_spec)),
            "input_shapes": json.dumps({m: list(s) for m, s in shapes.items()}),
            "modality_kinds": json.dumps(kinds), "vocab_sizes": json.dumps(vocab),
            "categorical": json.dumps({m: {"columns": list(c), "cardinalities": list(c.values())}
                                       for m, c in categorical.items()}),
            "normalization": normalization.to_json(self.normalize)}
        self.val = self.split(val_rows)

    def split(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {m: x[rows] for m, x in self.inputs.items()}, self.clean[rows.to(self.device)]

    def evaluate(self, model: nn.Module, split_data: tuple[dict[str, torch.Tensor], torch.Tensor],
                 noise: Mapping[str, float] | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        q, t = embed_split(model, split_data[0], self.normalize, self.device,  # type: ignore[arg-type]
                           self.spec.eval_batch_size, self.amp, noise=noise,
                           generator=generator, codes=self.codes)
        return retrieval_metrics(q, t, scale=model.scale().detach(),  # type: ignore[operator]
                                 labels=split_data[1], chunk=self.spec.eval_batch_size)

    def train_loss(self, idx: torch.Tensor, epoch: int,
                   generators: dict[str, torch.Generator]) -> torch.Tensor:
        active = self.mix_spec.active_at(epoch, self.spec.epochs)
        batch = _gather(self.train_inputs, self.normalize, idx, self.device)
        batch = augment_batch(batch, self.kinds, self.spec, generators["augment"])
        mix_gen, method = generators["mix"], self.mix_spec.method
        if active and method == "mixgen":
            y = rows_to(self.train_labels, idx, self.device)
            batch = mixgen_batch(batch, y, self.mix_spec, mix_gen, self.num_classes, self.kinds,
                                 math.ceil(MIXGEN_SHARE * idx.shape[0]))
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            q, t = self.model(batch)
        hard = hard_valid = None
        if active and method == "m3mix":
            lam = draw_lam(self.mix_spec, q.shape[0], mix_gen, self.device)
            hard, hard_valid = slerp(q, t, lam), lam < 1.0
        return info_nce(q, t, self.model.scale(), hard, hard_valid, self.m3mix_weight)

    def after_step(self) -> None:
        self.model.clamp_scale_()

    def epoch_metrics(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {"temperature": 1.0 / model.scale().detach()}  # type: ignore[operator]

    def validate(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.evaluate(model, self.val)

    def test(self, model: nn.Module, temperature: float | None
             ) -> tuple[dict[str, float], dict[str, object] | None]:
        test_split = self.split(self.test_rows)
        test = self.evaluate(model, test_split)
        out = dict(zip((f"test_{k}" for k in test), torch.stack(list(test.values())).tolist(),
                       strict=True))
        noise_gen = torch.Generator(device=self.device).manual_seed(self.spec.seed + 3)
        for side, m in (("query", self.query), ("target", self.target)):
            if self.inputs[m].is_floating_point() or self.kinds[m] in ("image", "video"):
                # inputs are standardised with train statistics, so this is 0.1 · std
                noisy = self.evaluate(model, test_split, {m: NOISE_STD}, noise_gen)
                out[f"test_mean_recall_{side}_noise"] = noisy["mean_recall"].item()
        return out, None
