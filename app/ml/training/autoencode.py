"""Training autoencoders and VAEs (``multimodal_ae`` / ``multimodal_vae``): the
``Objective`` the shared loop runs for them.

The loss of a batch is Σ_m recon_weights[m] · recon_m + β · KL (the VAE) +
classifier_weight · the task's loss of the head on the (mixed) targets; each
term is a mean over the samples that have the modality (``latent_loss`` gives
the per-sample formulas). The data path, normalisation, calibration and the
classification figures are the classifier objective's; validation adds
``recon_<m>``, ``kl``, ``elbo`` and ``loss`` (the weighted objective), the
test the same as ``test_…`` and the cross-modal reconstructions
``test_recon_<b>_from_<a>`` (modality b decoded from a alone). With
``classifier_weight`` 0 no classification figure is reported.
"""

from collections.abc import Mapping

import torch
from torch import nn

from app.ml.data.prepared import PreparedDataset
from app.ml.mixing import MixSpec, mix
from app.ml.models import ModelSpec
from app.ml.models.latent import LatentModel, LatentOutput, recon_weight_problems
from app.ml.tasks import Task
from app.ml.training.augment import augment_batch
from app.ml.training.batches import gather
from app.ml.training.classify import ClassifierObjective
from app.ml.training.evaluation import Split
from app.ml.training.latent_loss import kl_standard, present_mean, reconstruction_errors
from app.ml.training.spec import TrainSpec
from app.ml.training.streamed import StreamedClassifierObjective


def latent_metric_names(modalities: list[str], variational: bool, task: Task,
                        classifier: bool) -> tuple[str, ...]:
    """The unprefixed validation metrics of an autoencoder run."""
    names = ["loss", *(f"recon_{m}" for m in modalities)]
    if variational:
        names += ["kl", "elbo"]
    if classifier:
        names += ["nll" if n == "loss" else n for n in task.metric_names]
    return tuple(names)


class LatentObjective(ClassifierObjective):
    """The classifier objective's data and figures, with the autoencoder's loss."""

    def __init__(self, data: PreparedDataset, model_spec: ModelSpec, mix_spec: MixSpec,
                 spec: TrainSpec, task: Task, device: torch.device) -> None:
        super().__init__(data, model_spec, mix_spec, spec, task, device)
        assert isinstance(self.model, LatentModel)
        self.net: LatentModel = self.model  # the model itself, also when DDP wraps it
        for field, problem in recon_weight_problems(model_spec.recon_weights,
                                                    self.modalities):
            raise ValueError(f"model.{field}: {problem}")
        self.weights = {m: float(model_spec.recon_weights.get(m, 1.0)) for m in self.modalities}
        self.beta = model_spec.beta
        self.classifier_weight = model_spec.classifier_weight
        self.classifier = self.classifier_weight > 0
        self.metric_names = latent_metric_names(self.modalities, self.net.variational, task,
                                                self.classifier)
        if not self.classifier:
            self.headline = "loss"

    def presence(self, batch: Mapping[str, torch.Tensor],
                 masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n = next(iter(batch.values())).shape[0]
        return self.net.presence(batch, masks, n, self.device)

    def terms(self, out: LatentOutput, targets: Mapping[str, torch.Tensor],
              present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample terms (N,): ``recon_<m>`` (0 where a sample lacks m), ``kl``."""
        errors = reconstruction_errors(self.kinds, out.recon, targets, self.codes)
        terms = {f"recon_{m}": errors[m] * present[:, i].float()
                 for i, m in enumerate(self.modalities)}
        if out.logvar is not None:
            terms["kl"] = kl_standard(out.mu, out.logvar)
        return terms

    def objective(self, terms: Mapping[str, torch.Tensor], present: torch.Tensor
                  ) -> torch.Tensor:
        """Σ_m w_m · mean recon_m (over samples with m) + β · mean KL."""
        loss = sum(self.weights[m] * present_mean(terms[f"recon_{m}"], present[:, i])
                   for i, m in enumerate(self.modalities))
        if "kl" in terms:
            loss = loss + self.beta * terms["kl"].mean()
        return loss  # type: ignore[return-value]

    def train_loss(self, idx: torch.Tensor, epoch: int,
                   generators: dict[str, torch.Generator]) -> torch.Tensor:
        batch, masks, y = self.batch(idx)
        if self.spec.augment is not None:
            # only when asked: an autoencoder's default is no crop. With the classifier's
            # default crop a VAE on avmnist fell from 0.97 to 0.49-0.83 test accuracy
            # (20 epochs, docs/representations.md)
            batch = augment_batch(batch, self.kinds, self.spec, generators["augment"])
        active = self.mix_spec.active_at(epoch, self.spec.epochs)
        # none / latent_mixup / manifold_mixup leave the inputs as they are
        mixed = mix(batch, y, self.task_mix if active else self.no_mix, generators["mix"],
                    self.num_classes, kinds={m: self.kinds[m] for m in self.modalities},
                    host_generator=generators["host"])
        present = self.presence(batch, masks)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            out = self.model(batch, mixed, masks, full=True)
        loss = self.objective(self.terms(out, batch, present), present)
        if self.classifier:
            loss = loss + self.classifier_weight * self.task.loss(
                out.logits, self.task.targets(mixed.targets, self.smoothing))
        return loss

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, part: Split) -> tuple[dict[str, torch.Tensor],
                                                               torch.Tensor]:
        """A split's autoencoder figures (0-d tensors, at the posterior mean) and its
        logits."""
        model.eval()
        inputs = part.inputs
        assert isinstance(inputs, Mapping) and isinstance(part.normalize, Mapping)
        total = next(iter(inputs.values())).shape[0]
        sums: dict[str, torch.Tensor] = {}
        counts = {m: torch.zeros((), device=self.device) for m in self.modalities}
        objective = torch.zeros((), device=self.device)
        logits = []
        for start in range(0, total, self.spec.eval_batch_size):
            rows = slice(start, start + self.spec.eval_batch_size)
            batch, masks = gather(inputs, part.normalize, rows, self.device, part.present)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                out = model(batch, None, masks, full=True)
            present = self.presence(batch, masks)
            terms = self.terms(out, batch, present)
            n = present.shape[0]
            objective = objective + self.objective(terms, present).float() * n
            for k, v in terms.items():
                sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v.float().sum()
            for i, m in enumerate(self.modalities):
                counts[m] = counts[m] + present[:, i].float().sum()
            sums["elbo"] = sums.get("elbo", torch.zeros((), device=self.device)) - sum(
                terms.values()).float().sum()
            logits.append(out.logits.float())
        metrics = {f"recon_{m}": sums[f"recon_{m}"] / counts[m].clamp_min(1.0)
                   for m in self.modalities}
        metrics["loss"] = objective / max(total, 1)
        if self.net.variational:
            metrics["kl"] = sums["kl"] / max(total, 1)
            metrics["elbo"] = sums["elbo"] / max(total, 1)
        return metrics, torch.cat(logits)

    def classification(self, logits: torch.Tensor, labels: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        """The task's figures of the head, its loss named ``nll`` (``loss`` is the
        weighted objective); none without a classifier."""
        if not self.classifier:
            return {}
        return {("nll" if k == "loss" else k): v
                for k, v in self.task.metrics(logits, labels).items()}

    def validate(self, model: nn.Module) -> dict[str, torch.Tensor]:
        metrics, logits = self.evaluate(model, self.val)
        objective = metrics["loss"]
        if self.classifier:
            cls = self.classification(logits, self.val_labels)
            objective = objective + self.classifier_weight * cls["nll"]
            metrics.update(cls)
        metrics["loss"] = objective
        return metrics

    def calibrate(self, model: nn.Module) -> float | None:
        return super().calibrate(model) if self.classifier else None

    @torch.inference_mode()
    def cross_modal(self, model: nn.Module, part: Split) -> dict[str, float]:
        """``test_recon_<b>_from_<a>``: modality b decoded from a alone, over the
        samples that have both."""
        inputs = part.inputs
        assert isinstance(inputs, Mapping) and isinstance(part.normalize, Mapping)
        net = model.module if hasattr(model, "module") else model
        total = next(iter(inputs.values())).shape[0]
        pairs = [(i, a, j, b) for i, a in enumerate(self.modalities)
                 for j, b in enumerate(self.modalities) if a != b]
        sums = {(a, b): torch.zeros((), device=self.device) for _, a, _, b in pairs}
        counts = {(a, b): torch.zeros((), device=self.device) for _, a, _, b in pairs}
        for start in range(0, total, self.spec.eval_batch_size):
            rows = slice(start, start + self.spec.eval_batch_size)
            batch, masks = gather(inputs, part.normalize, rows, self.device, part.present)
            present = self.presence(batch, masks)
            decoded = {}
            for i, a in enumerate(self.modalities):
                mu, _ = net.encode({a: batch[a]}, {a: present[:, i]})
                decoded[a] = reconstruction_errors(self.kinds, net.decode(mu), batch,
                                                   self.codes)
            for i, a, j, b in pairs:
                both = (present[:, i] & present[:, j]).float()
                sums[(a, b)] += (decoded[a][b].float() * both).sum()
                counts[(a, b)] += both.sum()
        return {f"test_recon_{b}_from_{a}": (sums[(a, b)] / counts[(a, b)].clamp_min(1.0)).item()
                for _, a, _, b in pairs}

    def test(self, model: nn.Module, temperature: float | None
             ) -> tuple[dict[str, float], dict[str, object] | None]:
        part = self.split(self._test_rows)
        metrics, _ = self.evaluate(model, part)
        out = {f"test_{k}": v.item() for k, v in metrics.items()}
        out.update(self.cross_modal(model, part))
        if not self.classifier:
            return out, None
        classified, report = super().test(model, temperature)
        classified["test_nll"] = classified.pop("test_loss")
        out["test_loss"] += self.classifier_weight * classified["test_nll"]
        return {**classified, **out}, report


class StreamedLatentObjective(LatentObjective, StreamedClassifierObjective):
    """An autoencoder over a ``ShardedDataset``: its rows streamed from the shards."""
