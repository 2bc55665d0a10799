"""Metric-learning fine-tuning of the embedding model.

Loss: normalised softmax over learned class proxies (cosine logits / T).
It needs no pair mining, works with the small batches a CPU affords and is
a strong baseline for retrieval; the proxies are thrown away after training,
so the embedding serves products never seen in training.

A run directory holds everything needed to continue or audit a run:
`config.json`, `manifest.json`, `train_log.csv`, `backup/` (resume state) and
the final `model.keras`. Running the same command again on an interrupted
run directory resumes from the last finished epoch.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from shelfsight.edge_app.core.errors import ConfigError
from shelfsight.edge_app.core.spec import PREPROCESSING
from shelfsight.train.config import TrainConfig
from shelfsight.train.data import Sample, check_images, fingerprint, load_sources

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
CACHE_SIDE = 288  # decoded images are cached at this shorter side; crops are taken from it


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    model_path: Path
    manifest: dict[str, Any]


def _strategy():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _dataset(samples: list[Sample], classes: list[str], cfg: TrainConfig):
    import tensorflow as tf

    from shelfsight.train.augment import augment, decode, fit_square

    index = {name: i for i, name in enumerate(classes)}
    paths = tf.constant([str(s.path) for s in samples])
    labels = tf.constant([index[s.product] for s in samples], tf.int32)

    def load(path, label):
        return tf.cast(fit_square(decode(path), CACHE_SIDE), tf.uint8), label

    images = tf.data.Dataset.from_tensor_slices((paths, labels)).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if cfg.cache_images:
        images = images.cache()
    n = len(samples)
    products = images.shuffle(n, seed=cfg.seed, reshuffle_each_iteration=True).repeat()
    backgrounds = images.shuffle(n, seed=cfg.seed + 1, reshuffle_each_iteration=True).repeat()
    aug_cfg = cfg.augment_config()

    def view(product, background):
        (image, label), (clutter, _) = product, background
        return augment(tf.cast(image, tf.float32), tf.cast(clutter, tf.float32), cfg.input_size, aug_cfg), label

    return (
        tf.data.Dataset.zip((products, backgrounds))
        .map(view, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(cfg.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def _initialise_from(embedder, cfg: TrainConfig) -> str:
    """Start from a finished run's embedder or an exported `.tflite` (same backbone and dimension; the
    input size may differ). Returns the SHA-256 of the file the weights came from, for the manifest."""
    import keras

    from shelfsight.edge_app.core.spec import load_spec, sha256_file

    source = Path(cfg.init_from)
    if source.suffix == ".tflite":
        from shelfsight.train.warm_start import load_tflite_weights

        spec = load_spec(source)  # refuses a model that does not match its sidecar
        if spec.embedding_dim != cfg.embedding_dim or spec.backbone != cfg.backbone:
            raise ConfigError(
                f"init_from {source}: a {spec.backbone} model of dimension {spec.embedding_dim}, "
                f"this run trains {cfg.backbone} of dimension {cfg.embedding_dim}"
            )
        load_tflite_weights(embedder, source)
        return spec.fingerprint
    path = source / MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"init_from {cfg.init_from}: no {MODEL_FILE}; is this a finished training run or a .tflite?")
    try:
        previous = keras.models.load_model(path, compile=False)
        embedder.set_weights(previous.get_weights())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"init_from {cfg.init_from}: its model does not fit this config ({exc})") from exc
    log.info("initialised from %s", path)
    return sha256_file(path)


def _class_means(embedder, samples: list[Sample], classes: list[str], cfg: TrainConfig):
    """Unit mean embedding of each product's un-augmented images: proxies that start where the products are.

    Random proxies would pull a pretrained embedder around until they settle; a second
    stage of training should refine the embedding, not re-learn it.
    """
    import numpy as np
    import tensorflow as tf

    from shelfsight.train.augment import decode, fit_square

    paths = tf.data.Dataset.from_tensor_slices([str(s.path) for s in samples])
    images = paths.map(lambda p: fit_square(decode(p), cfg.input_size), num_parallel_calls=tf.data.AUTOTUNE)
    vectors = np.concatenate([embedder(batch, training=False).numpy() for batch in images.batch(64)])
    index = {name: i for i, name in enumerate(classes)}
    means = np.zeros((vectors.shape[1], len(classes)), np.float32)
    for sample, vector in zip(samples, vectors):
        means[:, index[sample.product]] += vector
    return means / np.maximum(np.linalg.norm(means, axis=0, keepdims=True), 1e-12)


def _cosine_classifier(num_classes: int, temperature: float):
    import keras

    class CosineClassifier(keras.layers.Layer):
        """Logits = cos(embedding, proxy) / T for one learned proxy per product."""

        def build(self, input_shape):
            self.proxies = self.add_weight(
                name="proxies", shape=(int(input_shape[-1]), num_classes), initializer="glorot_normal"
            )

        def call(self, embeddings):
            proxies = keras.ops.normalize(self.proxies, axis=0)
            return keras.ops.matmul(embeddings, proxies) / temperature

    return CosineClassifier(name="proxy_logits")


def _schedule(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    total = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate * 0.05,
        decay_steps=max(1, total - warmup),
        warmup_target=cfg.learning_rate,
        warmup_steps=warmup,
        alpha=0.02,
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _check_resume(run_dir: Path, cfg: TrainConfig) -> None:
    saved = run_dir / CONFIG_FILE
    if saved.exists():
        previous = TrainConfig.load(saved)
        if previous.to_dict() != cfg.to_dict():
            raise ConfigError(
                f"{run_dir} holds a run with a different config; resume with the same options "
                "(or `--config {saved}`), or choose a new --run-dir"
            )


def train(cfg: TrainConfig, run_dir: str | Path, verbose: int = 1, callbacks: Sequence[Any] = ()) -> RunResult:
    """Train (or resume) a run. Returns where the model and manifest are.

    `callbacks` are extra Keras callbacks, run after the resume backup of each epoch.
    """
    import keras
    import tensorflow as tf

    from shelfsight.train.model import build_embedding_model, set_trainable

    cfg.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(run_dir, cfg)
    _write_json(run_dir / CONFIG_FILE, cfg.to_dict())

    samples = load_sources(cfg.sources, exclude=cfg.exclude_products)
    check_images(samples)
    classes = sorted({s.product for s in samples})
    if len(classes) < 2:
        raise ConfigError("training needs at least two products")
    data_fp = fingerprint(samples)
    steps = cfg.steps_per_epoch or max(1, len(samples) // cfg.batch_size)
    log.info("training on %d images of %d products, %d steps/epoch", len(samples), len(classes), steps)

    keras.utils.set_random_seed(cfg.seed)
    strategy = _strategy()
    with strategy.scope():
        embedder = build_embedding_model(cfg.input_size, cfg.embedding_dim, cfg.backbone, cfg.pretrained)
        init_sha256 = _initialise_from(embedder, cfg) if cfg.init_from else ""
        set_trainable(embedder, cfg.train_from_block, freeze_batchnorm=cfg.pretrained)
        classifier = _cosine_classifier(len(classes), cfg.temperature)
        logits = classifier(embedder.output)
        if cfg.init_from and not (run_dir / "backup").exists():
            classifier.proxies.assign(_class_means(embedder, samples, classes, cfg))
        trainer = keras.Model(embedder.input, logits, name="trainer")
        trainer.compile(
            optimizer=keras.optimizers.AdamW(_schedule(cfg, steps), weight_decay=cfg.weight_decay, clipnorm=5.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="proxy_accuracy")],
        )
    dataset = _dataset(samples, classes, cfg)
    started = time.time()
    history = trainer.fit(
        dataset,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        verbose=verbose,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(run_dir / "backup"), delete_checkpoint=False),
            keras.callbacks.CSVLogger(str(run_dir / "train_log.csv"), append=True),
            keras.callbacks.TerminateOnNaN(),
            *callbacks,
        ],
    )
    model_path = run_dir / MODEL_FILE
    tmp = run_dir / ("tmp-" + MODEL_FILE)
    embedder.save(tmp)
    tmp.replace(model_path)
    last = {k: float(v[-1]) for k, v in history.history.items() if v}
    manifest = {
        "model": MODEL_FILE,
        "backbone": cfg.backbone,
        "input_size": cfg.input_size,
        "embedding_dim": cfg.embedding_dim,
        "preprocessing": PREPROCESSING,
        "classes": classes,
        "num_images": len(samples),
        "data_sources": [str(s) for s in cfg.sources],
        "excluded_products": list(cfg.exclude_products),
        "init_from": {"path": cfg.init_from, "sha256": init_sha256} if cfg.init_from else None,
        "training_data_fingerprint": data_fp,
        "metrics": {"final": last, "train_seconds_this_session": round(time.time() - started, 1)},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(run_dir / MANIFEST_FILE, manifest)
    log.info("saved %s", model_path)
    return RunResult(run_dir, model_path, manifest)


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_dir}: not a finished training run ({path.name}: {exc})") from exc
    return data
