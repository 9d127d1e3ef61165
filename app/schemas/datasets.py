import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from app.schemas.augmentation import AugmentationSpec
from app.schemas.common import StrictModel
from app.schemas.ingest import IngestSpecIn

SyntheticModality = Literal["image", "text", "audio", "tabular"]
# options several built-ins take, with one rule each
LabelNoise = Annotated[float, Field(ge=0, le=0.9, description="Share of training labels "
                                                               "flipped to another class.")]
AudioNoise = Annotated[float, Field(ge=0, le=5, description="Std of Gaussian noise added to "
                                    "the log-mel features, in units of their std.")]


class DigitsOptions(StrictModel):
    label_noise: LabelNoise = 0.0
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the label noise.")


class SyntheticOptions(StrictModel):
    num_samples: int = Field(1200, ge=100, le=100_000)
    num_classes: int = Field(4, ge=2, le=50)
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Same options and seed, same data.")
    modalities: list[SyntheticModality] = Field(
        ["image", "text", "audio", "tabular"], min_length=1, max_length=4,
        description="Which modalities to generate.")
    signal: dict[SyntheticModality, Annotated[float, Field(ge=0, le=1)]] = Field(
        {}, description="Per-modality signal strength in [0, 1] (default 1): the chance a "
                        "modality shows the sample's class (tabular: scale of the class means).")
    image_size: int = Field(16, ge=8, le=64, description="Images are (3, S, S) uint8.")
    text_length: int = Field(12, ge=4, le=256, description="Padded token sequence length.")
    vocab_size: int = Field(64, ge=16, le=50_000, description="Token ids 1..V-1; 0 = padding.")
    audio_bins: int = Field(32, ge=8, le=128, description="Spectrogram frequency bins.")
    audio_frames: int = Field(32, ge=8, le=256, description="Spectrogram time frames.")
    tabular_features: int = Field(8, ge=1, le=512)
    labels_per_sample: int = Field(
        1, ge=1, le=4,
        description="1: one class per sample. k > 1: multi-label — each sample has 1 to k "
                    "distinct classes (labels are multi-hot rows; train it with task "
                    "multilabel).")
    tasks: int = Field(
        1, ge=1, le=8,
        description="k > 1: multi-task — k label columns, each a function of the sample's "
                    "class: 'class' (the class itself) and 'group1' … (the classes grouped "
                    "into max(2, num_classes // 2) groups, each task by its own seeded "
                    "permutation). Train it with task multitask. Needs labels_per_sample 1.")
    missing_rate: float = Field(
        0.0, ge=0, le=1,
        description="Share of samples that lack one of their modalities (drawn uniformly; "
                    "never all of them). Needs two modalities or more.")

    @field_validator("modalities")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a modality twice")
        return value

    @field_validator("num_classes")
    @classmethod
    def _samples_per_class(cls, value: int, info: ValidationInfo) -> int:
        samples = info.data.get("num_samples")
        if samples is not None and samples < 10 * value:
            raise ValueError(f"needs at least 10 samples per class: num_samples {samples} "
                             f"allows at most {samples // 10} classes")
        return value

    @field_validator("vocab_size")
    @classmethod
    def _room_for_keywords(cls, value: int, info: ValidationInfo) -> int:
        from app.ml.data.synthetic import KEYWORDS_PER_CLASS

        classes = info.data.get("num_classes")
        if "text" not in info.data.get("modalities", ["text"]):
            return value
        if classes is not None and value < KEYWORDS_PER_CLASS * classes + 5:
            raise ValueError(f"must be at least {KEYWORDS_PER_CLASS * classes + 5} for "
                             f"{classes} classes (keywords plus filler words)")
        return value


    @field_validator("labels_per_sample")
    @classmethod
    def _at_most_the_classes(cls, value: int, info: ValidationInfo) -> int:
        classes = info.data.get("num_classes")
        if classes is not None and value > classes:
            raise ValueError(f"must be at most num_classes ({classes})")
        return value

    @field_validator("tasks")
    @classmethod
    def _one_label_per_task(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("labels_per_sample", 1) > 1:
            raise ValueError("multi-task labels are one class per sample per task; use "
                             "labels_per_sample 1")
        return value

    @field_validator("missing_rate")
    @classmethod
    def _two_modalities(cls, value: float, info: ValidationInfo) -> float:
        if value > 0 and len(info.data.get("modalities", ())) < 2:
            raise ValueError("needs at least two modalities (a sample never lacks all of them)")
        return value

    @model_validator(mode="after")
    def _size(self) -> "SyntheticOptions":
        from app.ml.data.synthetic import MAX_BYTES, array_bytes

        total = array_bytes(self.num_samples, self.modalities, self.model_dump())
        if total > MAX_BYTES:
            raise ValueError(f"these options make {total} bytes of arrays, over the limit of "
                             f"{MAX_BYTES}; use fewer samples or smaller modalities")
        return self


class FashionMnistOptions(StrictModel):
    label_noise: LabelNoise = 0.0
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the label noise.")
    subset: int | None = Field(
        None, ge=1000, le=60_000,
        description="Train on a fixed stratified subset of this many of the 60,000 training "
                    "images (for quick runs); null = all. It shrinks the train and val splits "
                    "only (a twelfth of it is val): the test split stays the official 10,000 "
                    "test images, so test figures compare with published ones and across "
                    "subsets (e.g. 1000 → 917 train, 83 val, 10,000 test). The test split is "
                    "scored once, at the end of a run.")


class AvmnistOptions(StrictModel):
    label_noise: LabelNoise = 0.0
    seed: int = Field(0, ge=0, le=2**31 - 1,
                      description="Seed of the image/utterance pairing, the added noise and "
                                  "the label noise.")
    audio_noise: AudioNoise = 0.5
    image_noise: float = Field(0.0, ge=0, le=1,
                               description="Std of Gaussian pixel noise, as a share of the "
                                           "0..255 range.")
    occlusion: float = Field(0.0, ge=0, le=0.9,
                             description="Share of each image hidden (set to 0, after the "
                                         "noise) by a square block at a seeded random "
                                         "position; the side is rounded to whole pixels "
                                         "(0.5 on 8x8: a 6x6 block, 56 %).")
    audio_mask: float = Field(0.0, ge=0, le=0.9,
                              description="Share of each utterance's 32 frames set to 0 "
                                          "(the features' mean, after the noise) in one "
                                          "seeded span.")


class MovingDigitsOptions(StrictModel):
    label_noise: LabelNoise = 0.0
    seed: int = Field(0, ge=0, le=2**31 - 1,
                      description="Seed of the trajectories, the clip/utterance pairing, the "
                                  "added noise and the label noise.")
    audio_noise: AudioNoise = 0.5
    frames: int = Field(8, ge=2, le=32, description="Frames per clip (T).")
    side: int = Field(16, ge=8, le=64, description="Frame side in pixels (the digit is 8x8).")


class DigitsSource(StrictModel):
    kind: Literal["builtin"]
    name: Literal["digits"] = Field(description="scikit-learn's 1,797 8x8 handwritten digits.")
    options: DigitsOptions = DigitsOptions()


class SyntheticSource(StrictModel):
    kind: Literal["builtin"]
    name: Literal["synthetic"] = Field(
        description="Seeded synthetic multimodal classification: image, text, audio "
                    "spectrogram and tabular modalities with per-modality signal.")
    options: SyntheticOptions = SyntheticOptions()


class FashionMnistSource(StrictModel):
    kind: Literal["builtin"]
    name: Literal["fashion-mnist"] = Field(
        description="Fashion-MNIST's 70,000 real 28x28 grey images of 10 clothes (MIT "
                    "licence), read from Debian's dataset-fashion-mnist files "
                    "(MIXLAB_FASHION_MNIST_DIR).")
    options: FashionMnistOptions = FashionMnistOptions()


class AvmnistSource(StrictModel):
    kind: Literal["builtin"]
    name: Literal["avmnist"] = Field(
        description="AV-MNIST-style audio-visual digits: scikit-learn's 1,797 8x8 digit "
                    "images, each paired with a spoken digit of its class (40x32 log-mel "
                    "of espeak-ng speech, shipped with mixlab).")
    options: AvmnistOptions = AvmnistOptions()


class MovingDigitsSource(StrictModel):
    kind: Literal["builtin"]
    name: Literal["moving-digits"] = Field(
        description="Video + audio digits: each of scikit-learn's 1,797 8x8 digits moving "
                    "along a seeded bouncing line over T frames (video T x 1 x side x side), "
                    "paired with a spoken digit of its class (40x32 log-mel, as avmnist).")
    options: MovingDigitsOptions = MovingDigitsOptions()


BuiltinSource = Annotated[DigitsSource | SyntheticSource | FashionMnistSource | AvmnistSource
                          | MovingDigitsSource, Field(discriminator="name")]
_BUILTIN_NAMES = {get_args(source.model_fields["name"].annotation)[0]
                  for source in get_args(get_args(BuiltinSource)[0])}


class UriSource(StrictModel):
    kind: Literal["uri"] = "uri"
    uri: str = Field(
        min_length=1, max_length=2000,
        description="file:///path (only under the server's MIXLAB_IMPORT_ROOTS) or "
                    "s3://bucket/key (only under the server's MIXLAB_S3_IMPORT_PREFIXES, "
                    "which may give each project its own); the format comes from the "
                    "name: .npz, .parquet, .zip, .tar.gz or .tgz.")
    spec: IngestSpecIn | None = Field(
        None, description="Parquet and archives: which column is which modality; omit to "
                          "infer.")


def _source_tag(value: Any) -> str:
    """uri for ``{"uri": ...}`` (kind may be left out), else builtin."""
    if isinstance(value, dict):
        kind = value.get("kind")
        return "uri" if kind == "uri" or (kind is None and "uri" in value) else "builtin"
    return "uri" if isinstance(value, UriSource) else "builtin"


Source = Annotated[Annotated[BuiltinSource, Tag("builtin")] | Annotated[UriSource, Tag("uri")],
                   Discriminator(_source_tag)]


def _untagged(exc: ValidationError) -> ValidationError:
    """The unions' errors without their tags in ``loc``: ``source.options.x`` rather
    than ``source.builtin.digits.options.x``; a bad or missing built-in name is
    ``source.name``."""
    tags = _BUILTIN_NAMES
    details: list[Any] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if loc and loc[0] in ("builtin", "uri"):
            loc = loc[1:]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = ("name", *loc)
        elif loc and loc[0] in tags:
            loc = loc[1:]
        detail = {"type": error["type"], "loc": loc, "input": error["input"]}
        if "ctx" in error:
            detail["ctx"] = error["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data(exc.title, details)


class DatasetCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "digits-noisy",
        "source": {"kind": "builtin", "name": "digits",
                   "options": {"label_noise": 0.4, "seed": 0}},
    }, {
        "name": "synthetic",
        "source": {"kind": "builtin", "name": "synthetic",
                   "options": {"num_samples": 1200, "num_classes": 4, "seed": 0,
                               "signal": {"image": 0.5}}},
    }, {
        "name": "zoo",
        "source": {"uri": "s3://my-bucket/zoo.parquet",
                   "spec": {"label": "species", "modalities": {
                       "photo": {"kind": "image", "column": "img", "size": [32, 32]}}}},
    }]})

    name: str = Field(min_length=1, max_length=200)
    source: Source

    @field_validator("source", mode="wrap")
    @classmethod
    def _source_errors(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            raise _untagged(exc) from None


class ModalityOut(BaseModel):
    name: str
    kind: str
    shape: list[int]
    dtype: str
    # listed only for datasets where some samples lack a modality, so the others
    # show the fields they always had
    missing: int | None = Field(None, exclude_if=lambda v: v is None,
                                description="Samples that lack this modality.")
    missing_split_counts: dict[str, int] | None = Field(
        None, exclude_if=lambda v: v is None, description="The missing samples per split.")


class ClassOut(BaseModel):
    index: int
    name: str
    count: int
    split_counts: dict[str, int]


class TaskClassOut(BaseModel):
    index: int
    name: str
    count: int


class TaskOut(BaseModel):
    name: str
    classes: list[TaskClassOut]


class DatasetError(BaseModel):
    field: str = Field(description="The column, array, member or option at fault ('file' "
                                   "for the file as a whole).")
    message: str


class DatasetOut(BaseModel):
    id: uuid.UUID
    name: str
    status: Literal["preparing", "ready", "failed"] = Field(
        description="preparing (queued or in a worker) → ready | failed.")
    source: dict[str, Any]
    progress: float = Field(description="Share of the preparation done, 0..1.")
    stage: str | None = Field(description="What the preparation is doing: queued, starting, "
                                          "fetching, loading (a built-in), unpacking, "
                                          "reading, finishing, writing; null once it is over.")
    errors: list[DatasetError] | None = Field(
        description="Why the preparation failed: the first problems found, each naming its "
                    "field (rows listed per problem, capped); null unless failed.")
    error_count: int = Field(description="How many problems were found, listed or not.")
    num_samples: int | None = Field(description="Null until ready, as are the fields below.")
    multilabel: bool | None = Field(description="Labels are sets of classes (multi-hot).")
    modalities: list[ModalityOut] | None
    classes: list[ClassOut] | None
    # listed only for multi-task datasets, so the others keep the fields they had
    tasks: list[TaskOut] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="Multi-task datasets: each label column (task) with its classes, in "
                    "order; the first is the one `classes` describes. Train them with task "
                    "multitask.")
    split_sizes: dict[str, int] | None
    noisy_train_labels: int | None
    size_bytes: int | None
    created_at: datetime
    started_at: datetime | None = Field(description="When a worker began preparing it.")
    finished_at: datetime | None


class PreviewRequest(AugmentationSpec):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"method": "cutmix", "alpha": 1.0, "seed": 0, "n": 8},
        {"method": "cross_modal", "seed": 0, "n": 4,
         "ops": {"image": "cutmix", "audio": "specmix", "text": "token_cutmix"}}]})

    seed: int = Field(0, ge=0, le=2**31 - 1)
    n: int = Field(8, ge=1, le=64, description="Number of mixed samples.")
    split: Literal["train", "val", "test"] = "train"


class TokenOut(BaseModel):
    token: str = Field(description="The token's text (from the dataset's vocabulary, else #id).")
    id: int
    position: int = Field(description="Position in the padded sequence.")
    source: Literal["a", "b"] = Field(description="Which source the token comes from.")


class TabularValues(BaseModel):
    features: list[str]
    a: list[float]
    b: list[float]
    mixed: list[float]
    truncated: bool = Field(False, description="Only the first features are listed.")


class ModalityPreview(BaseModel):
    kind: str
    op: str | None = Field(description="The op that mixed this modality of this sample "
                                       "(mixup_cutmix: cutmix, or mixup for the samples it "
                                       "does not cut); null when it was not mixed (method "
                                       "none, left out by `modalities`, or λ = 1).")
    deferred: bool = Field(False, description="The model mixes this modality itself (e.g. "
                                              "embedding_mixup on token embeddings with λ "
                                              "and the partner): the input is not changed.")
    region: list[int] | None = Field(
        None, description="What the op took from B (null when this sample's op cut nothing): "
                          "cutmix / spec_cutmix box (y0, x0, y1, x1) "
                          "/ (f0, t0, f1, t1); specmix bands (f0, f1, t0, t1); token_cutmix "
                          "(start, end, partner_start): A's [start, end) holds B's tokens "
                          "from partner_start on; all half-open.")
    tokens: list[TokenOut] | None = Field(
        None, description="Text: the mixed token sequence (padding left out), each token "
                          "marked with its source; null for a deferred op.")
    tokens_a: list[str] | None = Field(None, description="Text: source A's tokens.")
    tokens_b: list[str] | None = Field(None, description="Text: source B's tokens.")
    mask: list[bool] | None = Field(
        None, description="Text: the attention mask of the mix (for embedding_mixup the union "
                          "of A's and B's).")
    values: TabularValues | None = Field(None, description="Tabular: A, B and mixed values.")
    frames: int | None = Field(None, description="Video: frames per clip; a cutmix region "
                                                 "is the same box on every frame.")
    image_url: str = Field(description="PNG of this modality for this sample.")


class PreviewSample(BaseModel):
    index_a: int = Field(description="Dataset index of the sample being mixed.")
    index_b: int = Field(description="Dataset index of its partner.")
    lam: float = Field(description="Weight of sample A (share of A's pixels for cutmix).")
    label_a: str
    label_b: str
    label_mixture: dict[str, float] = Field(description="Soft target: class name → weight.")
    box: list[int] | None = Field(None, description="CutMix box y0, x0, y1, x1 (half-open); "
                                                    "null when this sample was not cut.")
    image_url: str
    modalities: dict[str, ModalityPreview] = Field(
        default_factory=dict, description="Per modality: the op, what it did, and its PNG.")


class PreviewOut(BaseModel):
    dataset_id: uuid.UUID
    spec: PreviewRequest
    samples: list[PreviewSample]
    image_url: str = Field(description="PNG grid of every sample: A | B | mixed, of the "
                                       "default modality (the first image, else the first).")
    image_urls: dict[str, str] = Field(default_factory=dict,
                                       description="PNG of every sample, per modality.")
    ops: dict[str, str] = Field(default_factory=dict, description=(
        "Op the method planned per mixed modality; each sample's `modalities[m].op` says "
        "what ran on it (mixup_cutmix plans cutmix and interpolates the samples it does not "
        "cut)."))
    deferred: list[str] = Field(default_factory=list,
                                description="Modalities the model mixes itself.")
    layer: int | None = Field(None, description="manifold_mixup: the hidden layer mixed at.")
