"""What a ``weights`` setting means, decided in one place (paper 3.2, 3.5: the
backbones start from ImageNet).

Every layer that takes a ``weights`` string (a profile, ``--weights``, a run's
config) reads it through :func:`parse_weights`: the run engine resolving
``"auto"`` (``runs.experiments.resolve_weights``), ``build_model`` loading it,
the run's deviations from the paper (``runs.runconfig.deviations``) naming it.
Fetching the files is ``imagenet.py`` and ``standin.py``'s job; this module
only says which kind of start a setting asks for.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ecgpaper.model.standin import STANDINS

#: the kinds of start: random, Keras's ImageNet file, an offline stand-in, a weights
#: file, or "auto" (ImageNet when reachable, else the stand-in, else random)
KINDS = ("none", "imagenet", "standin", "file", "auto")


@dataclass(frozen=True)
class WeightsSpec:
    kind: str  # one of KINDS
    setting: str  # as given ("none" for None)

    @property
    def pretrained(self) -> bool:
        """The backbone starts from learnt features (anything but random; "auto" is
        pretrained unless it falls back to random, which resolves it to "none")."""
        return self.kind != "none"

    @property
    def path(self) -> Path:
        """The weights file (kind "file")."""
        if self.kind != "file":
            raise ValueError(f"weights {self.setting!r} are not a file")
        return Path(self.setting).expanduser()

    @property
    def label(self) -> str:
        """How results name this start."""
        if self.kind == "imagenet":
            return "ImageNet"
        if self.kind == "standin":
            return STANDINS[self.setting].label
        if self.kind == "none":
            return "random initialisation"
        if self.kind == "auto":
            return "ImageNet when reachable, else the offline stand-in, else random initialisation"
        return f"weights from {self.setting}"


def parse_weights(weights) -> WeightsSpec:
    """``None``/``"none"``, ``"imagenet"``, ``"auto"`` (any case), a stand-in key of
    ``standin.STANDINS`` or a path, as a :class:`WeightsSpec`."""
    if weights is None:
        return WeightsSpec("none", "none")
    text = str(weights)
    if text.lower() in ("none", "imagenet", "auto"):
        return WeightsSpec(text.lower(), text.lower())
    if text in STANDINS:
        return WeightsSpec("standin", text)
    return WeightsSpec("file", text)
