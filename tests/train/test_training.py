"""Real training on tiny generated data: run directory contents, resume after interruption, data sources."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from shelfsight.edge_app.core.errors import ConfigError, InputError  # noqa: E402
from shelfsight.train.config import TrainConfig  # noqa: E402
from shelfsight.train.data import fingerprint, load_source, load_sources  # noqa: E402
from shelfsight.train.trainer import train  # noqa: E402


def tiny_config(source: Path, **overrides) -> TrainConfig:
    base = dict(
        sources=[str(source)],
        backbone="tiny",
        pretrained=False,
        input_size=48,
        embedding_dim=16,
        epochs=3,
        steps_per_epoch=2,
        batch_size=4,
        train_from_block=0,
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_run_directory_has_model_config_log_and_manifest(tiny_run: Path, tiny_dataset):
    for name in ("model.keras", "config.json", "manifest.json", "train_log.csv"):
        assert (tiny_run / name).is_file(), name
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["classes"] == [f"product-{i:02d}" for i in range(6)]
    assert manifest["embedding_dim"] == 32 and manifest["input_size"] == 64
    assert manifest["training_data_fingerprint"] == fingerprint(load_source(tiny_dataset["train"]))
    assert np.isfinite(manifest["metrics"]["final"]["loss"])


def test_tiny_model_tells_products_apart(tiny_model: Path, tiny_dataset):
    """The shared test model must be discriminative, or every test built on it checks plumbing only."""
    from shelfsight.edge_app.core.labels import scan_folder
    from shelfsight.edge_app.evaluation.retrieval import embed_paths, evaluate
    from shelfsight.edge_app.runtime.factory import open_embedder

    with open_embedder(tiny_model) as embedder:
        vectors = embed_paths(embedder, scan_folder(tiny_dataset["queries"], "q").paths)
        recall = evaluate(embedder, tiny_dataset["catalog"], tiny_dataset["queries"]).recall_at_1
    cosines = vectors @ vectors.T
    off_diagonal = (cosines.sum() - np.trace(cosines)) / (len(cosines) ** 2 - len(cosines))
    assert off_diagonal < 0.99
    assert recall >= 0.75


def test_training_reduces_the_loss(tiny_dataset, tmp_path):
    run = train(
        tiny_config(tiny_dataset["train"], epochs=4, steps_per_epoch=6, learning_rate=5e-3), tmp_path / "r", verbose=0
    )
    losses = [float(row["loss"]) for row in csv.DictReader(open(run.run_dir / "train_log.csv"))]
    assert len(losses) == 4
    assert losses[-1] < losses[0]


def test_interrupted_run_resumes_from_last_epoch(tiny_dataset, tmp_path):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt("simulated power cut")

    cfg = tiny_config(tiny_dataset["train"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", verbose=0, callbacks=[Interrupt()])
    assert not (tmp_path / "run" / "model.keras").exists()
    train(cfg, tmp_path / "run", verbose=0)
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(tmp_path / "run" / "train_log.csv"))]
    assert epochs == [0, 1, 2]  # epoch 0 was not trained twice
    assert (tmp_path / "run" / "model.keras").is_file()


def test_resume_with_a_different_config_is_refused(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset["train"], epochs=1), tmp_path / "run", verbose=0)
    with pytest.raises(ConfigError, match="different config"):
        train(tiny_config(tiny_dataset["train"], epochs=2), tmp_path / "run", verbose=0)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"sources": ["x"], "epochz": 3}))
    with pytest.raises(ConfigError, match="epochz"):
        TrainConfig.load(path)
    with pytest.raises(ConfigError, match="embedding_dim"):
        TrainConfig(sources=["x"], embedding_dim=3).validate()


def _grocery_tree(root: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for product in ("Fruit/Apple/Granny-Smith", "Packages/Milk/Arla-Milk"):
            folder = root / split / product
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 90, 20, 200)).save(folder / f"{i}.jpg")
    (root / "train.txt").write_text(
        "train/Fruit/Apple/Granny-Smith/0.jpg, 1, 0\ntrain/Fruit/Apple/Granny-Smith/1.jpg, 1, 0\n"
        "train/Packages/Milk/Arla-Milk/0.jpg, 40, 9\n"
    )
    iconic = root / "iconic-images-and-descriptions/Fruit/Apple/Granny-Smith"
    iconic.mkdir(parents=True)
    Image.new("RGB", (40, 40), (0, 200, 0)).save(iconic / "Granny-Smith_Iconic.jpg")
    # as in the real dataset, an iconic image filed under another folder than its photos
    odd = root / "iconic-images-and-descriptions/Packages/Dairy/Arla-Milk"
    odd.mkdir(parents=True)
    Image.new("RGB", (40, 40), (250, 250, 250)).save(odd / "Arla-Milk_Iconic.jpg")
    (root / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),Iconic Image Path (str),Product Description Path (str)\n"
        "Granny-Smith,1,Apple,0,/iconic-images-and-descriptions/Fruit/Apple/Granny-Smith/Granny-Smith_Iconic.jpg,/x.txt\n"
        "Arla-Milk,40,Milk,9,/iconic-images-and-descriptions/Packages/Dairy/Arla-Milk/Arla-Milk_Iconic.jpg,/y.txt\n"
    )


def test_grocery_list_iconic_and_image_folder_share_product_ids(tmp_path):
    _grocery_tree(tmp_path)
    from_list = load_source(tmp_path / "train.txt")
    from_folder = load_source(tmp_path / "val")
    from_csv = load_source(tmp_path / "classes.csv")
    assert (
        {s.product for s in from_list}
        == {s.product for s in from_folder}
        == {"Fruit/Apple/Granny-Smith", "Packages/Milk/Arla-Milk"}
    )
    assert [s.product for s in from_csv] == ["Fruit/Apple/Granny-Smith", "Packages/Milk/Arla-Milk"]
    combined = load_sources([tmp_path / "train.txt", tmp_path / "classes.csv"], exclude=["Packages/Milk/Arla-Milk"])
    assert {s.product for s in combined} == {"Fruit/Apple/Granny-Smith"} and len(combined) == 3
    # Arla-Milk has one listed photo: a clear error naming its folder
    with pytest.raises(InputError, match="Arla-Milk"):
        load_sources([tmp_path / "train.txt"])


def test_corrupt_training_image_is_named_before_training(tiny_dataset, tmp_path):
    import shutil

    from shelfsight.edge_app.core.errors import ImageError

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset["train"], data)
    (data / "product-03" / "view2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="view2.jpg"):
        train(tiny_config(data), tmp_path / "run", verbose=0)


def test_bad_sources_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nope"):
        load_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_source(tmp_path / "empty")
    listing = tmp_path / "list.txt"
    listing.write_text("train/Fruit/Apple/Granny-Smith/missing.jpg, 1, 0\n")
    with pytest.raises(InputError, match="missing.jpg"):
        load_source(listing)


def test_second_stage_starts_from_the_first_runs_weights(tiny_run: Path, tiny_dataset, tmp_path):
    import keras

    from shelfsight.train.model import build_embedding_model
    from shelfsight.train.trainer import _class_means, _initialise_from

    # the first run's dimension; its input size may differ (48 here, 64 there)
    cfg = tiny_config(tiny_dataset["train"], init_from=str(tiny_run), embedding_dim=32, augment={"rotate_prob": 0.2})
    fresh = build_embedding_model(cfg.input_size, cfg.embedding_dim, "tiny", pretrained=False)
    _initialise_from(fresh, cfg)
    first = keras.models.load_model(tiny_run / "model.keras", compile=False)
    for mine, theirs in zip(fresh.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    # proxies start at the products' mean embeddings: unit columns, one per product
    samples = load_sources([str(tiny_dataset["train"])])
    classes = sorted({s.product for s in samples})
    means = _class_means(fresh, samples, classes, cfg)
    assert means.shape == (cfg.embedding_dim, len(classes))
    np.testing.assert_allclose(np.linalg.norm(means, axis=0), 1.0, rtol=1e-5)

    run = train(cfg, tmp_path / "stage2", verbose=0)
    assert (run.run_dir / "model.keras").is_file()
    assert json.loads((run.run_dir / "config.json").read_text())["init_from"] == str(tiny_run)


def test_second_stage_from_a_mismatched_run_is_refused(tiny_run: Path, tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset["train"], init_from=str(tiny_run), embedding_dim=16)
    with pytest.raises(ConfigError, match="does not fit"):
        train(cfg, tmp_path / "stage2", verbose=0)
    with pytest.raises(ConfigError, match="finished training run"):
        train(tiny_config(tiny_dataset["train"], init_from=str(tmp_path)), tmp_path / "other", verbose=0)


def test_augment_overrides_are_checked():
    cfg = TrainConfig(sources=["x"], augment={"rotate_prob": 0.5, "zoom_out": [0.7, 1.0]}).validate()
    assert cfg.augment_config().zoom_out == (0.7, 1.0)
    with pytest.raises(ConfigError, match="rotate_probability"):
        TrainConfig(sources=["x"], augment={"rotate_probability": 0.5}).validate()
    with pytest.raises(ConfigError, match="zoom_out"):
        TrainConfig(sources=["x"], augment={"zoom_out": 0.7}).validate()


@pytest.mark.parametrize("quantization, min_cosine", [("int8", 0.98), ("fp16", 0.999)])
def test_warm_start_from_an_exported_tflite_computes_what_it_computes(
    quantization: str, min_cosine: float, fresh_tiny_model: Path, tiny_run: Path, tiny_dataset, tmp_path: Path
):
    """With the Keras run gone, the .tflite's weights rebuild the same network (fp16 keeps its
    weights as float16 constants expanded at run time, a different path from int8's)."""
    from shelfsight.convert.tflite import convert_run
    from shelfsight.edge_app.core.images import fit_square, load_rgb
    from shelfsight.edge_app.core.labels import scan_folder
    from shelfsight.edge_app.runtime.factory import open_embedder
    from shelfsight.train.model import build_embedding_model
    from shelfsight.train.warm_start import load_tflite_weights

    model = fresh_tiny_model
    if quantization != "int8":
        model = tmp_path / f"tiny-{quantization}.tflite"
        convert_run(tiny_run, model, quantization=quantization, calibration_dir=tiny_dataset["train"])
    images = np.stack([fit_square(load_rgb(p), 64) for p in scan_folder(tiny_dataset["queries"], "q").paths])
    with open_embedder(model) as embedder:
        shipped = embedder.embed_batch(images)
    fresh = build_embedding_model(64, 32, "tiny", pretrained=False)
    untouched = fresh.predict(images.astype(np.float32), verbose=0)
    load_tflite_weights(fresh, model)
    restored = fresh.predict(images.astype(np.float32), verbose=0)
    assert np.mean(np.sum(restored * shipped, axis=1)) >= min_cosine
    assert np.mean(np.sum(untouched * shipped, axis=1)) < 0.9


def test_training_continues_from_an_exported_tflite(tiny_model: Path, tiny_dataset, tmp_path):
    from shelfsight.edge_app.core.spec import load_spec

    cfg = tiny_config(tiny_dataset["train"], init_from=str(tiny_model), embedding_dim=32, epochs=1)
    run = train(cfg, tmp_path / "more", verbose=0)
    manifest = json.loads((run.run_dir / "manifest.json").read_text())
    assert manifest["init_from"] == {"path": str(tiny_model), "sha256": load_spec(tiny_model).fingerprint}


def test_warm_start_from_a_mismatched_or_tampered_tflite_is_refused(tiny_model: Path, tiny_dataset, tmp_path):
    from shelfsight.edge_app.core.errors import ModelError

    with pytest.raises(ConfigError, match="dimension 32"):
        train(tiny_config(tiny_dataset["train"], init_from=str(tiny_model)), tmp_path / "a", verbose=0)
    tampered = tmp_path / "tampered.tflite"
    data = bytearray(tiny_model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    (tmp_path / "tampered.tflite.json").write_text(Path(str(tiny_model) + ".json").read_text())
    with pytest.raises(ModelError, match="fingerprint mismatch"):
        train(tiny_config(tiny_dataset["train"], init_from=str(tampered), embedding_dim=32), tmp_path / "b", verbose=0)
