"""What a run is: its settings (:class:`RunConfig`, with a stable id derived from
the config and the split manifest), its data (:class:`RunData`), and how it
departs from the paper's protocol (:func:`deviations`, written to its
config.json and listed in REPORT.md; paper sections 3.1, 3.2, 3.5, 4)."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from ecgpaper.config import EARLY_STOPPING_PATIENCE, PAPER_IMAGE_SIZE, PAPER_TRAIN_IMAGES
from ecgpaper.model.weightspec import parse_weights
from ecgpaper.paths import Workspace

#: images whose statistics PreciseBN gives the BatchNorm layers before each scoring
PRECISE_BN_IMAGES = 128


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; its hash (plus the manifest's) is the run id."""
    model: str = "VGG16"
    weights: str = "imagenet"  # "imagenet" | "none" | path to a weights file
    batch_size: int = 16
    learning_rate: float = 1e-4
    epochs: int = 20
    early_stopping: bool = False  # section 4: the grid ran a fixed 20 epochs
    patience: int = EARLY_STOPPING_PATIENCE
    optimizer: str = "adam"  # "adam" (paper) | "sgd" (momentum 0.9)
    seed: int = 0
    image_size: int = 224
    fit: str = "resize"
    crop: bool = False
    scaling: str = "rescale"  # paper: /255; or "preprocess_input"
    protocol: str = "paper"
    split_seed: int = 0
    #: a cross-validation fold (the leakage study, ``splits.cv_fold_name``), e.g. "cv2-fold0":
    #: the manifest is that fold's; "": the protocol's 70/15/15 split of ``split_seed``
    cv_fold: str = ""
    dataset: str = "synthetic-quick"
    profile: str = "quick"
    train_base: bool = True  # False: the backbone never trains (finetune "none")
    dropout: float = 0.5
    # the training recipe (config.RECIPES; docs/training_recipe.md): every deviation
    # from the paper's protocol is one of these named settings
    recipe: str = "paper"  # "paper": one phase, the whole network | "transfer": head, then top block
    head: str = "paper"  # config.HEADS: "paper" | "standardized" | "multiscale" | "batchnorm"
    head_steps: int = 0  # transfer: at most this many head-phase steps on cached features
    head_learning_rate: float = 1e-3  # transfer: Adam, head phase (profiles: 10 x learning_rate)
    finetune: str = "all"  # backbone layers that train: "all" | "top" | "none"
    bn_mode: str = ""  # "frozen" | "trainable"; "": frozen for pretrained weights, else trainable
    conv_batchnorm: bool = False  # VGG16: BatchNorm between every convolution and its ReLU (paper 3.2)
    bn_stats: str = ""  # "train_images": a random backbone's BatchNorm statistics set from them;
    # "precise": the statistics of every BatchNorm layer that trains recomputed from the training
    # images before training and before each scoring (PreciseBN; the paper recipe)
    weights_requested: str = ""  # what was asked ("auto"...) when it differs from ``weights``
    label_control: str = "none"  # "shuffled": training labels permuted (sanity control)
    paper_epochs: int = 0  # the paper's epochs for this setting, before the profile scaled them
    limit_train_per_class: int | None = None  # smoke profile: fewer images
    mixed_precision: bool = False
    xla: bool = False
    deterministic_ops: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["cv_fold"]:  # absent unless set: the run ids of every other run stay as they were
            del d["cv_fold"]
        return d

    @property
    def workspace(self) -> Workspace:
        """Where the run is filed: ``results/<dataset>/<profile>/runs/<id>/``."""
        return Workspace(self.dataset, self.profile)

    def run_id(self, manifest_sha: str) -> str:
        blob = json.dumps({"config": self.to_dict(), "manifest": manifest_sha}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return (f"{self.model.lower()}-b{self.batch_size}-lr{self.learning_rate:.0e}"
                f"-e{self.epochs}-s{self.seed}-{digest}")


@dataclass
class RunData:
    """The three subsets of a manifest as uint8 arrays (see pipeline.subset_arrays)."""
    train: tuple
    val: tuple
    test: tuple
    manifest_sha: str
    extra: dict = field(default_factory=dict)


def paper_steps(batch_size: int, paper_epochs: int, n_train: int = PAPER_TRAIN_IMAGES) -> int:
    """Optimizer steps of the paper's run with this batch size and epoch count (3.1, 4)."""
    return math.ceil(n_train / batch_size) * paper_epochs


def run_provenance(config: RunConfig, data: RunData) -> dict:
    """What config.json adds to the config: the run's deviations from the paper,
    the ImageNet file loaded and whose md5 vouched for it, and where the data was."""
    run_deviations = deviations(config)
    provenance = {}
    if config.weights == "imagenet":
        from ecgpaper.model.imagenet import weights_provenance

        provenance = {"weights_file": weights_provenance(config.model, image_size=config.image_size)}
        if provenance["weights_file"]["md5_source"] != "keras":
            run_deviations.append(f"weights: {provenance['weights_file']['path']}, checked against the md5 "
                                  f"list {provenance['weights_file']['md5_source']}, not Keras's ImageNet file")
    return {"deviations": run_deviations, **provenance, **data.extra}


def deviations(config: RunConfig) -> list[str]:
    """The ways a run departs from the paper's protocol (3.1, 3.2, 3.5, 4), in words;
    written to the run's config.json and listed in REPORT.md."""
    out = []
    if config.recipe == "transfer":
        out.append(f"transfer recipe: head trained first on the frozen backbone's cached features "
                   f"({config.head_steps} steps at most, Adam {config.head_learning_rate:g}), then "
                   f"{'the top block' if config.finetune == 'top' else config.finetune + ' layers'} "
                   f"of the backbone fine-tuned for {config.epochs} epochs "
                   "(paper: the whole network from the first step)")
    elif config.finetune != "all" or not config.train_base:
        out.append(f"backbone layers trained: {config.finetune if config.train_base else 'none'} (paper: all)")
    if config.head == "standardized":
        out.append("head: Normalization of the pooled features fitted to the training set")
    elif config.head == "multiscale":
        out.append("head: the pooled input of the backbone's top block beside its pooled output, "
                   "with a Normalization fitted to the training set (paper: the pooled output only)")
    if config.head == "batchnorm":
        out.append("head: BatchNormalization after the pooling (paper 3.2: \"batch normalization may "
                   "be incorporated\"), otherwise the paper's head")
    if config.conv_batchnorm:
        out.append("VGG16 with BatchNormalization between every convolution and its ReLU, started as the "
                   "identity on the training images (paper 3.2: \"batch normalization may be incorporated if "
                   "... additional training stability is needed\"; docs/training_recipe.md)")
    if config.bn_stats == "precise":
        out.append(f"BatchNorm statistics of the layers that train recomputed from {PRECISE_BN_IMAGES} "
                   "training images before training and before every validation and test scoring "
                   "(PreciseBN; Keras: moving averages)")
    if config.bn_stats == "train_images" and config.model != "VGG16":
        out.append("random backbone: BatchNorm statistics computed on the training images, then frozen")
    weights = parse_weights(config.weights)
    if weights.kind != "imagenet":
        out.append(f"weights: {weights.label} (paper: ImageNet)")
    if config.scaling != "rescale":
        out.append(f"input scaling: {config.scaling} (paper: /255)")
    if config.image_size != PAPER_IMAGE_SIZE:
        out.append(f"image size {config.image_size} px (paper: {PAPER_IMAGE_SIZE})")
    if config.label_control != "none":
        out.append(f"labels: {config.label_control} (sanity control)")
    return out
