"""The training recipe learns, and the sanity checks that prove it (issue: the
paper's models must learn). Runs on the smoke twin, CPU-minutes."""
from __future__ import annotations

import numpy as np
import pytest

from ecgpaper.data.prepare import prepare_data
from ecgpaper.errors import UserError
from ecgpaper.model.backbones import build_model
from ecgpaper.paths import Workspace
from ecgpaper.runs import experiments, sanity
from ecgpaper.runs.experiments import experiment_configs, load_run_data, resolve_scaling, resolve_weights
from ecgpaper.runs.runconfig import RunConfig
from ecgpaper.runs.training import head_model, top_block_split

keras = pytest.importorskip("keras")


def _head_fit(head: str, features, y, steps=300):
    keras.utils.set_random_seed(0)
    model = build_model("VGG16", image_size=32, weights="none", head=head)
    if head == "standardized":
        model.get_layer("head_norm").adapt(features)
    hm = head_model(model)
    hm.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    onehot = np.eye(4)[y]
    hm.fit(features, onehot, batch_size=16, epochs=steps * 16 // len(y), verbose=0)
    return hm.evaluate(features, onehot, verbose=0)[1]


def test_the_standardized_head_learns_features_of_any_scale_the_paper_head_cannot():
    """The collapse's cause: pooled features of a random VGG16 on /255 pixels are
    ~1e-3 and vary even less between ECG pages; the paper's head cannot move its
    logits in a few hundred steps, the standardized head fits them."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 16)
    signal = rng.normal(size=(4, 512))[y] + 0.3 * rng.normal(size=(64, 512))
    tiny = (1e-3 + 1e-6 * signal).astype("float32")  # a common part, tiny differences
    assert _head_fit("standardized", tiny, y) >= 0.95
    assert _head_fit("paper", tiny, y) <= 0.5


def test_the_multiscale_head_reads_the_top_block_input_and_output_and_survives_saving(tmp_path):
    """Head "multiscale" (docs/training_recipe.md, "Two scales"): the pooled input of
    VGG16's block 5 (block4_pool, 512) beside its pooled output (512), standardized."""
    keras.utils.set_random_seed(0)
    model = build_model("VGG16", image_size=32, weights="none", head="multiscale", finetune="top")
    assert model.get_layer("head_features").output.shape[-1] == 1024
    assert model.get_layer("head_pool_mid").input.name == model.get_layer("block4_pool").output.name
    x = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["VGG16", "ResNet50"])
def test_training_the_top_block_on_cached_activations_makes_the_same_update_as_on_images(name):
    """The transfer recipe trains the top block and head on the frozen layers' cached
    outputs: one full-batch Adam step from the same weights must give the same model
    as the step on the images (nothing below the top block trains, nothing is augmented)."""
    from ecgpaper.model.backbones import calibrate_batchnorm

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (8, 32, 32, 3)).astype("float32")
    y = np.eye(4)[np.arange(8) % 4]
    keras.utils.set_random_seed(0)
    # no dropout: its random masks would differ between the two models
    a = build_model(name, image_size=32, weights="none", head="multiscale", finetune="top", bn_mode="frozen",
                    dropout=0.0)
    calibrate_batchnorm(a, x)
    b = keras.models.clone_model(a)
    b.set_weights(a.get_weights())
    before = b.predict(x, verbose=0)
    a.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    a.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    config = RunConfig(model=name, image_size=32)
    below, above = top_block_split(b, config)
    above.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    above.fit(np.asarray(below(x, training=False)), y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert np.abs(a.predict(x, verbose=0) - before).max() > 1e-3  # the step changed the model
    np.testing.assert_allclose(b.predict(x, verbose=0), a.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_the_head_normalization_keeps_a_dead_feature_from_exploding():
    """A channel constant on the training images (variance 0) would be divided by
    ~0 on a new image (seen: validation loss 306 on the grouped split); its
    variance is floored at NORM_VARIANCE_FLOOR x the mean variance."""
    from ecgpaper.model.backbones import NORM_VARIANCE_FLOOR, fit_head_normalization

    model = build_model("VGG16", image_size=32, weights="none", head="standardized", finetune="none")
    rng = np.random.default_rng(0)
    train = rng.normal(1.0, 1.0, (20, 512)).astype("float32")
    train[:, 0] = 0.0  # dead on every training image
    fit_head_normalization(model, train)
    norm = model.get_layer("head_norm")
    variance = np.asarray(norm.variance).ravel()
    assert variance[0] == pytest.approx(NORM_VARIANCE_FLOOR * train.var(axis=0).mean(), rel=1e-3)
    np.testing.assert_allclose(variance[1:], train.var(axis=0)[1:], rtol=1e-3)  # the others untouched
    new = np.ones((1, 512), "float32")
    assert np.abs(np.asarray(norm(new))).max() < 20


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    from conftest import point_paths

    mp = pytest.MonkeyPatch()
    point_paths(mp, tmp_path_factory.mktemp("recipe-project"))
    prepared = prepare_data(None, profile="smoke", progress=False, log=lambda *_: None)
    yield prepared, load_run_data(prepared, "paper", 0)
    mp.undo()


def test_each_backbone_overfits_one_batch(smoke_data):
    prepared, data = smoke_data
    for config in experiment_configs("baseline", profile="smoke", dataset=prepared.dataset):
        result = sanity.overfit_one_batch(config, data)
        assert result["passed"], result
        assert result["batch_images"] == 32 and result["steps"] <= sanity.OVERFIT_MAX_STEPS


def test_shuffled_label_control_stays_at_chance_and_is_labelled(smoke_data, monkeypatch):
    from conftest import point_paths

    prepared, data = smoke_data
    point_paths(monkeypatch, prepared.root.parents[2])
    config = experiment_configs("baseline", profile="smoke", dataset=prepared.dataset)[0]
    control = sanity.shuffled_label_control(config, data, log=lambda *_: None)
    assert control["passed"], control
    # the control can fail on this test set: a model right on three quarters of its ECGs
    # (duplicate groups resampled, as every run's interval) is told apart from chance
    from ecgpaper.metrics import evaluate_predictions

    _, y_test, rows = data.test
    groups = rows["group"].astype(str).to_numpy()
    codes = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    learned = np.where([codes[g] % 4 != 3 for g in groups], y_test, (y_test + 1) % 4)
    ci = evaluate_predictions(y_test, np.eye(4)[learned], groups=groups)["ci95"]["accuracy"]
    assert sanity.at_chance(ci, y_test) == (control["majority_rate"], False), (ci, control)
    # the control is a run of its own, labelled as such
    from ecgpaper.runs.store import load_run

    run = load_run(Workspace(prepared.dataset, "smoke"), control["run_id"])
    assert run.config["label_control"] == "shuffled"
    assert any("shuffled" in d for d in run.config["deviations"])


def test_weights_auto_falls_back_in_order_and_says_so(monkeypatch):
    # resolve_weights calls ecgpaper.model.imagenet and .standin through the names experiments imported
    said = []
    monkeypatch.setattr(experiments, "_RESOLVED", {})
    monkeypatch.setattr(experiments, "ensure_imagenet", lambda *a, **k: False)
    monkeypatch.setattr(experiments, "ensure_standin", lambda *a, **k: True)
    assert resolve_weights("auto", "VGG16", 64, log=said.append) == "hed-bsds500"
    assert resolve_weights("auto", "ResNet50", 64, log=said.append) == "none"
    assert any("stand-in" in s for s in said) and any("random initialisation" in s for s in said)
    monkeypatch.setattr(experiments, "_RESOLVED", {})
    monkeypatch.setattr(experiments, "ensure_imagenet", lambda *a, **k: True)
    assert resolve_weights("auto", "ResNet50", 64) == "imagenet"


def test_imagenet_weights_are_fetched_when_missing_and_their_absence_stops_the_run_early(monkeypatch):
    """Notebook 06 stopped after the 20 leakage runs: MobileNetV2 and EfficientNetB0's
    ImageNet files were never fetched. "imagenet" now fetches, and fails with what to run."""
    fetched = []
    monkeypatch.setattr(experiments, "_RESOLVED", {})
    monkeypatch.setattr(experiments, "ensure_imagenet",
                        lambda name, **k: fetched.append(name) or name != "EfficientNetB0")
    assert resolve_weights("imagenet", "MobileNetV2", 32) == "imagenet"
    with pytest.raises(UserError, match="download --weights"):
        resolve_weights("imagenet", "EfficientNetB0", 32)
    assert fetched == ["MobileNetV2", "EfficientNetB0"]


def test_the_notebook_run_checks_every_backbone_before_the_first_notebook(monkeypatch, tmp_path):
    from ecgpaper import runner

    checked = []
    monkeypatch.setattr(experiments, "_RESOLVED", {})
    monkeypatch.setattr(experiments, "ensure_imagenet", lambda name, **k: checked.append(name) or False)
    with pytest.raises(UserError, match="ImageNet weights"):
        runner.run_notebooks("paper-mini", notebook_dir=tmp_path, log=lambda *_: None)
    assert checked == ["VGG16"]  # stopped at the first missing file, before any notebook
    checked.clear()
    monkeypatch.setattr(experiments, "ensure_imagenet", lambda name, **k: checked.append(name) or True)
    runner.preflight("paper-mini", log=lambda *_: None)
    assert checked == ["VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0"]


def test_a_gpu_profile_without_a_gpu_stops_with_what_to_do(monkeypatch):
    monkeypatch.delenv("ECGPAPER_ALLOW_CPU", raising=False)
    spec = [dict(model="VGG16", batch_size=16, learning_rate=1e-4, epochs=20)]
    for profile in ("paper", "paper-mini"):
        with pytest.raises(UserError, match="--allow-cpu"):
            experiments.scaled_configs(spec, profile=profile, dataset="d", weights="none")
    assert experiments.scaled_configs(spec, profile="smoke", dataset="d")  # CPU profiles go on
    monkeypatch.setenv("ECGPAPER_ALLOW_CPU", "1")  # the explicit flag
    [config] = experiments.scaled_configs(spec, profile="paper", dataset="d", weights="none")
    assert not config.mixed_precision and not config.xla  # no GPU: the run says so in its id
    assert resolve_weights("none", "ResNet50", 64) == "none"


def test_inputs_match_the_weights(monkeypatch):
    monkeypatch.setattr(experiments, "_RESOLVED", {})
    monkeypatch.setattr(experiments, "ensure_imagenet", lambda *a, **k: True)
    assert resolve_scaling("auto", "imagenet") == "preprocess_input"
    assert resolve_scaling("auto", "hed-bsds500") == "preprocess_input"
    assert resolve_scaling("auto", "none") == "rescale"
    assert resolve_scaling("rescale", "imagenet") == "rescale"
    # the paper's /255 on pretrained weights: BatchNorm trains (its statistics expect other inputs)
    paper = experiments.scaled_configs([dict(model="ResNet50", batch_size=16, learning_rate=1e-4, epochs=20)],
                                       profile="paper", dataset="d", weights="imagenet")[0]
    assert paper.scaling == "rescale" and paper.bn_mode == "trainable"
    quick = experiments.scaled_configs([dict(model="ResNet50", batch_size=16, learning_rate=1e-4, epochs=20)],
                                       profile="quick", dataset="d", weights="imagenet")[0]
    assert quick.scaling == "preprocess_input" and quick.bn_mode == "frozen"


def test_stand_in_loads_into_the_vgg16_backbone(tmp_path, monkeypatch):
    """build_model(weights=<stand-in key>) loads the stand-in's conv layers."""
    import h5py

    import ecgpaper.model.standin as w

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    f = tmp_path / "standin.weights.h5"
    rng = np.random.default_rng(1)
    with h5py.File(f, "w") as h5:
        for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
            for i in range(n):
                k, bias = base.get_layer(f"block{b}_conv{i + 1}").get_weights()
                g = h5.create_group(f"block{b}/layers/conv2d{'' if i == 0 else '_' + str(i)}/vars")
                g["0"] = rng.normal(size=k.shape).astype("float32")
                g["1"] = rng.normal(size=bias.shape).astype("float32")
    import ecgpaper.model.backbones as backbones

    real = w.load_standin
    monkeypatch.setattr(backbones, "load_standin", lambda base, key: real(base, key, path=f))
    model = build_model("VGG16", image_size=32, weights="hed-bsds500", head="standardized", finetune="top")
    with h5py.File(f) as h5:
        np.testing.assert_array_equal(model.get_layer("block3_conv3").get_weights()[0],
                                      h5["block3/layers/conv2d_2/vars/0"][()])
    assert not model.get_layer("block4_conv3").trainable and model.get_layer("block5_conv1").trainable
