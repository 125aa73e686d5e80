"""Tables of the README generated from the code, so the README cannot drift from it
(tests/test_readme.py compares them). Print one with
``python -c "from ecgpaper.readme import profile_table; print(profile_table())"``.
"""
from __future__ import annotations

from ecgpaper.config import PROFILES

#: The paper's epoch counts (sections 4 and 5.4): the grid and baseline ran 20, the
#: curves and the five runs 30; a profile scales them by ``epochs_scale``.
PAPER_EPOCHS = (20, 30)

WEIGHTS_WORDS = {
    "none": "none (random)",
    "imagenet": "ImageNet",
    "auto": "auto: ImageNet (fetched when reachable), else the offline stand-in, else random",
}


def _finetune_epochs(profile) -> str:
    lo, hi = (max(profile.min_epochs, round(e * profile.epochs_scale)) for e in PAPER_EPOCHS)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def profile_table() -> str:
    """Markdown table of ``config.PROFILES``: image size, weights, recipe, twin size."""
    rows = ["| profile | image | weights | training recipe | synthetic twin |", "|---|---|---|---|---|"]
    for name, p in PROFILES.items():
        if p.recipe == "transfer":
            recipe = (f"transfer: up to {p.head_steps} head steps on cached features + "
                      f"{_finetune_epochs(p)} fine-tuning epochs")
        else:
            scale = {"rescale": "/255", "preprocess_input": "preprocess_input"}.get(p.scaling, p.scaling)
            recipe = f"the paper's: whole network, {_finetune_epochs(p)} epochs, {scale}"
        twin = f"{p.synth_distinct_per_class} distinct pages per class, {p.synth_page_size[0]} x {p.synth_page_size[1]} px"
        rows.append(f"| `{name}` | {p.image_size} px | {WEIGHTS_WORDS.get(p.weights, p.weights)} | {recipe} | {twin} |")
    return "\n".join(rows)


def weights_table() -> str:
    """Markdown table of the ImageNet files Keras loads (``weights._BACKBONES``): what to
    fetch, or to copy by hand into ``~/.keras/models/`` on a machine without internet."""
    from ecgpaper.model.weights import _BACKBONES, weights_status

    rows = ["| backbone | file (into `~/.keras/models/`) | from |", "|---|---|---|"]
    for name in _BACKBONES:
        st = weights_status(name, image_size=224)
        rows.append(f"| {name} | `{st['file_name']}` | {st['url']} |")
    return "\n".join(rows)
