"""Augmentations that make training photos look like an in-store kiosk camera.

Products at a kiosk are held at any angle, at varying distance, in front of
shelves and people, under store lighting, through a cheap lens and a JPEG
encoder. Each step below simulates one of those; all run in `tf.data` on the
CPU, per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.35, 1.0)
    rotate_prob: float = 0.75  # any in-plane angle
    zoom_out: tuple[float, float] = (0.55, 1.0)  # product smaller in the frame, clutter around it
    perspective: float = 0.0012  # projective coefficient magnitude (per pixel at 224px)
    color_prob: float = 0.9
    # Mild on purpose: colour is often the only cue between produce (orange vs satsuma,
    # lemon vs melon); stronger shifts measurably confused them.
    brightness: float = 0.15
    contrast: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.8, 1.2)
    hue: float = 0.02
    white_balance: tuple[float, float] = (0.92, 1.08)
    blur_prob: float = 0.3
    jpeg_prob: float = 0.3


def decode(path: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.cast(image, tf.float32)


def fit_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """TF twin of `edge_app.images.fit_square` (shorter side -> size, centre crop) for eval-time inputs."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    image = tf.image.resize(image, new, method="bilinear", antialias=True)
    return tf.image.resize_with_crop_or_pad(image, size, size)


def random_resized_crop(image: tf.Tensor, size: int, scale: tuple[float, float]) -> tf.Tensor:
    begin, extent, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        area_range=scale,
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0,
        max_attempts=10,
    )
    crop = tf.slice(image, begin, extent)
    return tf.image.resize(crop, (size, size), method="bilinear", antialias=True)


def _random_projective(size: int, cfg: AugmentConfig) -> tf.Tensor:
    """8 coefficients mapping output pixels to input pixels (what the transform op expects)."""
    c = (size - 1) / 2.0
    angle = tf.where(tf.random.uniform([]) < cfg.rotate_prob, tf.random.uniform([], 0, 2 * math.pi), 0.0)
    zoom = tf.random.uniform([], cfg.zoom_out[0], cfg.zoom_out[1])
    cos, sin = tf.cos(angle) * zoom, tf.sin(angle) * zoom
    shift = tf.random.uniform([2], -0.15, 0.15) * size * (1.0 - zoom)
    px, py = tf.unstack(tf.random.uniform([2], -1.0, 1.0) * cfg.perspective * 224.0 / size)
    # forward: centre -> rotate+scale -> perspective -> back to centre + shift
    to_centre = tf.constant([[1.0, 0.0, -c], [0.0, 1.0, -c], [0.0, 0.0, 1.0]])
    rotate = tf.stack([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    project = tf.stack([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [px, py, 1.0]])
    back = tf.stack([[1.0, 0.0, c + shift[0]], [0.0, 1.0, c + shift[1]], [0.0, 0.0, 1.0]])
    forward = back @ project @ rotate @ to_centre
    inverse = tf.linalg.inv(forward)
    inverse = inverse / inverse[2, 2]
    return tf.reshape(inverse, [9])[:8]


def _warp(image: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
    size = tf.shape(image)[:2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=size,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]


def place_on_background(image: tf.Tensor, background: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Rotate/zoom/tilt the product and fill what it no longer covers with clutter."""
    size = image.shape[0]
    transform = _random_projective(size, cfg)
    warped = _warp(image, transform)
    mask = _warp(tf.ones_like(image[..., :1]), transform)
    return warped * mask + background * (1.0 - mask)


def colour(image: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    image = image / 255.0
    image = tf.image.random_brightness(image, cfg.brightness)
    image = tf.image.random_contrast(image, *cfg.contrast)
    image = tf.image.random_saturation(image, *cfg.saturation)
    image = tf.image.random_hue(image, cfg.hue)
    white_balance = tf.random.uniform([3], *cfg.white_balance)
    return tf.clip_by_value(image * white_balance, 0.0, 1.0) * 255.0


def blur(image: tf.Tensor) -> tf.Tensor:
    sigma = tf.random.uniform([], 0.4, 1.8)
    x = tf.range(-3.0, 4.0)
    kernel_1d = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel_1d = kernel_1d / tf.reduce_sum(kernel_1d)
    kernel = tf.tile((kernel_1d[:, None] * kernel_1d[None, :])[:, :, None, None], [1, 1, 3, 1])
    return tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")[0]


def jpeg(image: tf.Tensor) -> tf.Tensor:
    quality = tf.random.uniform([], 25, 95, dtype=tf.int32)
    encoded = tf.image.adjust_jpeg_quality(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality)
    return tf.cast(encoded, tf.float32)


def _maybe(prob: float, fn, image: tf.Tensor) -> tf.Tensor:
    return tf.cond(tf.random.uniform([]) < prob, lambda: fn(image), lambda: image)


def augment(image: tf.Tensor, background: tf.Tensor, size: int, cfg: AugmentConfig) -> tf.Tensor:
    """One training view: float32 (size, size, 3) in 0..255."""
    view = random_resized_crop(image, size, cfg.crop_scale)
    view = tf.image.random_flip_left_right(view)
    clutter = random_resized_crop(background, size, (0.1, 1.0))
    view = place_on_background(view, clutter, cfg)
    view = _maybe(cfg.color_prob, lambda v: colour(v, cfg), view)
    view = _maybe(cfg.blur_prob, blur, view)
    view = _maybe(cfg.jpeg_prob, jpeg, view)
    view = tf.clip_by_value(view, 0.0, 255.0)
    view.set_shape([size, size, 3])
    return view
