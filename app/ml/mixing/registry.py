"""The two registries and the single entry point ``mix``.

A **modality op** mixes one tensor (``ops.py``, ``text.py``, ``audio.py``). A
**method** decides, for a batch, which op each modality gets (its plan). Adding
either is one function and one ``register_*`` call.

``mix`` draws one λ and one partner per sample, shared by every modality.
Region ops (cutmix, token_cutmix, specmix…) run first; the first one's exact
kept share becomes the λ that the other modalities and the labels use.

Label smoothing has one rule (``smooth_targets``): a class row is pulled
towards 1/K, a multi-label row per class towards ½, since each class of a
multi-label target is its own two-way problem (towards 1/K, an absent tag of
a 20-tag problem would be smoothed to 0.005 and a present one to 0.905, so
smoothing would barely touch the negatives it is meant to soften).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from app.ml.mixing import audio, ops, text
from app.ml.mixing.sampling import sample_beta, sample_partners
from app.ml.mixing.types import KINDS, Mixed, MixSpec

OpFn = Callable[[torch.Tensor, ops.OpContext], ops.OpResult]


@dataclass(frozen=True)
class ModalityOp:
    fn: OpFn
    kinds: frozenset[str]
    region: bool = False  # cuts a region whose kept share defines λ


MODALITY_OPS: dict[str, ModalityOp] = {}


def register_op(name: str, fn: OpFn, kinds: tuple[str, ...], region: bool = False) -> None:
    if name in MODALITY_OPS:
        raise ValueError(f"modality op {name!r} is already registered")
    MODALITY_OPS[name] = ModalityOp(fn, frozenset(kinds), region)


register_op("mixup", ops.mixup, ("image", "video", "audio", "tabular"))
register_op("cutmix", ops.cutmix, ("image", "video"), region=True)
register_op("embedding_mixup", text.embedding_mixup_op, ("text",))
register_op("token_cutmix", text.token_cutmix, ("text",), region=True)
register_op("concat", text.concat_text, ("text",))
register_op("specmix", audio.specmix, ("audio",), region=True)
register_op("spec_cutmix", audio.spec_cutmix, ("audio",), region=True)

# What "mix this modality" means for each kind when a method or the spec says
# nothing more specific; text mixes at the embedding level.
DEFAULT_OPS = {"image": "mixup", "video": "mixup", "audio": "mixup", "tabular": "mixup",
               "text": "embedding_mixup"}


# What the samples an op skips (``Plan.only``) get instead: interpolation.
FALLBACK_OP = "mixup"


@dataclass
class Plan:
    ops: dict[str, str]  # modality -> op name
    lam: torch.Tensor | None = None  # replaces the drawn λ (mixgen's fixed weight)
    # op applies to these samples (bool (N,)); the others get FALLBACK_OP
    only: dict[str, torch.Tensor] = field(default_factory=dict)
    layer: int | None = None  # manifold mixup: hidden layer to mix at
    latent: bool = False  # latent mixup: the model mixes its shared latent


@dataclass
class PlanRequest:
    spec: MixSpec
    kinds: dict[str, str]  # modality -> kind, for the modalities being mixed
    lam: torch.Tensor
    index: torch.Tensor
    generator: torch.Generator
    host_generator: torch.Generator | None


MethodFn = Callable[[PlanRequest], Plan]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str, fn: MethodFn) -> None:
    if name in METHODS:
        raise ValueError(f"mixing method {name!r} is already registered")
    METHODS[name] = fn


def _defaults(kinds: dict[str, str], overrides: dict[str, str] | None = None) -> dict[str, str]:
    chosen = {m: DEFAULT_OPS[k] for m, k in kinds.items()}
    chosen.update({m: op for m, op in (overrides or {}).items() if m in kinds})
    return chosen


def _with_images_cut(req: PlanRequest) -> dict[str, str]:
    images = [m for m, k in req.kinds.items() if k in ("image", "video")]
    if not images:
        raise ValueError("cutmix needs an image or video modality")
    return _defaults(req.kinds, {m: "cutmix" for m in images})


def _mixup(req: PlanRequest) -> Plan:
    return Plan(_defaults(req.kinds))


def _cutmix(req: PlanRequest) -> Plan:
    return Plan(_with_images_cut(req))


def _mixup_cutmix(req: PlanRequest) -> Plan:
    """timm/DeiT: cutmix with ``switch_prob``, else mixup — per batch or per sample."""
    spec, lam = req.spec, req.lam
    n, device = lam.shape[0], lam.device
    draws = 1 if spec.lam_mode == "batch" else n
    use_cut = (torch.rand(draws, generator=req.generator, device=device)
               < spec.switch_prob).expand(n)
    lam_cut = (sample_beta(spec.cutmix_alpha, draws, req.generator, device).expand(n)
               if spec.cutmix_alpha is not None else lam)
    if spec.lam_mode == "pair":  # both partners: the same choice and the same λ
        leader = ops.pair_leader(req.index)
        use_cut, lam_cut = use_cut[leader], lam_cut[leader]
    lam = torch.where(use_cut & (lam < 1.0), lam_cut, lam)
    plan = Plan(_with_images_cut(req), lam=lam)
    plan.only = {m: use_cut for m, op in plan.ops.items() if op == "cutmix"}
    return plan


def _cross_modal(req: PlanRequest) -> Plan:
    """Every modality of a sample mixed with the same partner and λ; ops per
    modality from ``spec.ops`` (else the kind's default)."""
    return Plan(_defaults(req.kinds, req.spec.ops))


def _manifold(req: PlanRequest) -> Plan:
    """Manifold mixup (Verma et al., ICML 2019): inputs untouched; the model mixes
    hidden states at a layer drawn per batch from ``manifold_layers``. The draw is
    made on the host so it never waits for the GPU."""
    host = req.host_generator
    if host is None:
        if req.generator.device.type != "cpu":
            raise ValueError("manifold_mixup on an accelerator needs a host_generator")
        host = req.generator
    layers = req.spec.manifold_layers
    pick = int(torch.randint(len(layers), (1,), generator=host).item())
    return Plan({}, layer=layers[pick])


def _latent(req: PlanRequest) -> Plan:
    """Latent mixup: inputs untouched; a model with a shared latent (an
    autoencoder's, ``app.ml.models.latent``) interpolates it with the drawn λ and
    partner, and the targets mix with the same ones."""
    return Plan({}, latent=True)


def _mixgen(req: PlanRequest) -> Plan:
    """MixGen (Hao et al., WACV 2023): images interpolated with a fixed λ, texts
    concatenated; built from the unmixed batch, so no sample is mixed twice."""
    kinds = req.kinds
    if not any(k == "image" for k in kinds.values()) or "text" not in kinds.values():
        raise ValueError("mixgen needs an image and a text modality")
    chosen = {m: ("mixup" if k == "image" else "concat") for m, k in kinds.items()
              if k in ("image", "text")}
    # unmixed samples (prob, or their own partner) stay unmixed: λ = 1
    mixing = (req.lam < 1.0) & (req.index != torch.arange(req.lam.shape[0],
                                                         device=req.lam.device))
    lam = torch.where(mixing, torch.full_like(req.lam, req.spec.mixgen_lam),
                      torch.ones_like(req.lam))
    return Plan(chosen, lam=lam)


register_method("none", lambda req: Plan({}))
register_method("mixup", _mixup)
register_method("cutmix", _cutmix)
register_method("mixup_cutmix", _mixup_cutmix)
register_method("cross_modal", _cross_modal)
register_method("manifold_mixup", _manifold)
register_method("mixgen", _mixgen)
register_method("latent_mixup", _latent)


def smooth_targets(dense: torch.Tensor, smoothing: float,
                   multilabel: bool = False) -> torch.Tensor:
    """Label smoothing of dense (N, K) targets, the one rule every path uses: a
    class row towards the uniform 1/K; a multi-label row per class towards ½
    (each class is its own two-way problem). Affine, so smoothing before or
    after mixing gives the same targets. ``dense`` itself when smoothing is 0."""
    if smoothing <= 0:
        return dense
    return dense * (1.0 - smoothing) + smoothing / (2 if multilabel else dense.shape[1])


def soft_targets(targets: torch.Tensor, num_classes: int | None, smoothing: float = 0.0,
                 dtype: torch.dtype = torch.float32, multilabel: bool = False) -> torch.Tensor:
    """Dense (N, K) targets from class indices, or soft / one-hot / multi-label
    rows as given; smoothing folded in (``smooth_targets``)."""
    if targets.dim() == 1:
        if multilabel:
            raise ValueError("multi-label targets are (N, K) multi-hot rows, not class indices")
        if num_classes is None:
            raise ValueError("num_classes is needed for class-index targets")
        dense = F.one_hot(targets.long(), num_classes).to(dtype)
    else:
        dense = targets.to(dtype)
    return smooth_targets(dense, smoothing, multilabel)


def mix_targets(targets: torch.Tensor, num_classes: int | None, smoothing: float,
                lam: torch.Tensor, index: torch.Tensor,
                multilabel: bool = False) -> torch.Tensor:
    """``lam * dense + (1 - lam) * dense[index]`` of the dense, smoothed targets.

    For class indices no one-hot matrix and no gathered copy of it are built:
    the (N, K) result is written once and the sample's and its partner's class
    are scattered in. Each entry is the same float32 expression as in the dense
    formula, so both paths agree bit for bit.
    """
    if targets.dim() != 1 or multilabel:
        dense = soft_targets(targets, num_classes, smoothing, multilabel=multilabel)
        w = lam[:, None].to(dense.dtype)
        return w * dense + (1.0 - w) * dense[index]
    if num_classes is None:
        raise ValueError("num_classes is needed for class-index targets")
    # the two values of a (smoothed) one-hot row, as soft_targets computes them
    levels = torch.arange(2, device=targets.device, dtype=torch.float32)  # off, on
    if smoothing > 0:
        levels = levels * (1.0 - smoothing) + smoothing / num_classes
    w = lam.float().view(-1, 1, 1)
    # table[i, p, q] = λ_i·levels[p] + (1 - λ_i)·levels[q]: p = own class?, q = partner's?
    table = w * levels.view(1, 2, 1) + (1.0 - w) * levels.view(1, 1, 2)
    own = targets.long()[:, None]
    other = own[index]
    out = table[:, 0, 0:1].expand(own.shape[0], num_classes).contiguous()
    out.scatter_(1, own, table[:, 1, 0:1])
    out.scatter_(1, other, torch.where(other == own, table[:, 1, 1:2], table[:, 0, 1:2]))
    return out


def draw_lam(spec: MixSpec, n: int, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    """Per-sample λ (float32, (n,)), before pairing: equal across the batch in
    ``batch`` mode; one per sample otherwise (``pair`` mode then shares it
    within each pair)."""
    draws = 1 if spec.lam_mode == "batch" else n
    lam = sample_beta(spec.alpha, draws, generator, device)
    if spec.prob < 1.0:
        apply = torch.rand(draws, generator=generator, device=device) < spec.prob
        lam = torch.where(apply, lam, torch.ones_like(lam))
    return lam.expand(n).clone() if draws == 1 else lam


def _kind_from_shape(x: torch.Tensor) -> str:
    if x.dim() == 5:
        return "video"
    if x.dim() == 4:
        return "image"
    if x.dim() == 3:
        return "audio"
    if x.dim() == 2 and not x.is_floating_point():
        return "text"
    return "tabular"


def infer_kinds(batch: dict[str, torch.Tensor]) -> dict[str, str]:
    """Kinds for callers that do not pass ``kinds``: from the modality's name
    (``image``, ``audio_mel``…), else from its shape — 5-D video, 4-D image,
    3-D spectrogram, 2-D integer text, anything else tabular."""
    kinds = {}
    for name, x in batch.items():
        kind = next((k for k in KINDS if name == k or name.startswith(f"{k}_")), None)
        kinds[name] = kind or _kind_from_shape(x)
    return kinds


def _check(spec: MixSpec, kinds: dict[str, str], batch: dict[str, torch.Tensor]) -> None:
    if spec.method not in METHODS:
        raise ValueError(f"unknown mixing method {spec.method!r}; known: {sorted(METHODS)}")
    for modality, op in spec.ops.items():
        if modality not in batch:
            raise ValueError(f"ops names modality {modality!r}, not in the batch")
        if op not in MODALITY_OPS:
            raise ValueError(f"unknown op {op!r} for {modality!r}; known: {sorted(MODALITY_OPS)}")
        if kinds[modality] not in MODALITY_OPS[op].kinds:
            raise ValueError(f"op {op!r} does not apply to {kinds[modality]} modality "
                             f"{modality!r}")
    for modality in spec.modalities or ():
        if modality not in batch:
            raise ValueError(f"modalities names {modality!r}, not in the batch")


def mix(batch: dict[str, torch.Tensor], targets: torch.Tensor, spec: MixSpec,
        generator: torch.Generator, num_classes: int | None = None, *,
        kinds: dict[str, str] | None = None,
        host_generator: torch.Generator | None = None, multilabel: bool = False) -> Mixed:
    """Mix a batch of one or more modalities, one partner and one λ per sample.

    ``batch`` maps modality name to a tensor whose first dim is the batch;
    ``targets`` are class indices (N,) or soft / one-hot / multi-label rows (N, K).
    ``multilabel`` says the rows are multi-hot (a set of classes per sample), so
    ``label_smoothing`` pulls each class towards ½ as the multilabel task does; it
    is an argument because a one-hot row and a one-tag multi-hot row look alike.
    ``kinds`` maps modality to kind (inferred from names if omitted). The
    generator must live on the batch's device. A batch of one comes back
    unmixed with λ = 1. Nothing is written into the caller's tensors.
    """
    if not batch:
        raise ValueError("batch has no modalities")
    first = next(iter(batch.values()))
    n, device = first.shape[0], first.device
    if any(v.shape[0] != n for v in batch.values()) or targets.shape[0] != n:
        raise ValueError("all modalities and the targets must share the batch dimension")
    kinds = kinds or infer_kinds(batch)
    _check(spec, kinds, batch)

    if spec.method == "none" or n < 2:
        dense = soft_targets(targets, num_classes, spec.label_smoothing, multilabel=multilabel)
        return Mixed(inputs=dict(batch), targets=dense, lam=torch.ones(n, device=device),
                     index=torch.arange(n, device=device), method=spec.method)

    lam = draw_lam(spec, n, generator, device)
    index = sample_partners(n, generator, device, spec.pairing,
                            involution=spec.lam_mode == "pair")
    if spec.lam_mode == "pair":
        own = torch.arange(n, device=device)
        lam = torch.where(own <= index, lam, lam[index])
        lam = torch.where(own == index, torch.ones_like(lam), lam)

    mixed_kinds = {m: k for m, k in kinds.items()
                   if spec.modalities is None or m in spec.modalities}
    plan = METHODS[spec.method](PlanRequest(spec, mixed_kinds, lam, index, generator,
                                             host_generator))
    if plan.lam is not None:
        lam = plan.lam

    out = Mixed(inputs=dict(batch), targets=targets, lam=lam, index=index, method=spec.method,
                ops=dict(plan.ops), layer=plan.layer, latent=plan.latent)
    deferred = []
    # region ops first: the first one's kept share is the λ everyone else uses
    order = sorted(plan.ops, key=lambda m: not MODALITY_OPS[plan.ops[m]].region)
    lam_fixed = False
    shared: dict[object, torch.Tensor] = {}
    for modality in order:
        op = MODALITY_OPS[plan.ops[modality]]
        x = batch[modality]
        result = op.fn(x, ops.OpContext(lam, index, spec, generator, shared))
        active = plan.only.get(modality)
        value, kept = result.value, result.kept
        if active is not None:
            # samples this op skips (mixup_cutmix chose mixup) are interpolated
            value = torch.where(active.view(-1, *([1] * (x.dim() - 1))), value,
                                MODALITY_OPS[FALLBACK_OP].fn(x, ops.OpContext(
                                    lam, index, spec, generator, shared)).value)
            out.op_mask[modality], out.fallback_ops[modality] = active, FALLBACK_OP
            if kept is not None:
                kept = torch.where(active, kept, lam)
            if result.region is not None:
                result.region = torch.where(active[:, None], result.region,
                                            torch.zeros_like(result.region))
        if kept is not None and not lam_fixed:
            lam, lam_fixed = kept, True
        out.inputs[modality] = value
        if result.region is not None:
            out.regions[modality] = result.region
        if result.mask is not None:
            out.masks[modality] = result.mask
        if result.deferred:
            deferred.append(modality)
    out.lam, out.deferred = lam, tuple(deferred)
    image_regions = [m for m in out.regions if kinds[m] in ("image", "video")]
    out.boxes = out.regions[image_regions[0]] if image_regions else None
    out.targets = mix_targets(targets, num_classes, spec.label_smoothing, lam, index,
                              multilabel)
    return out
