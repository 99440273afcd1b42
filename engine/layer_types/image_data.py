"""Caffe's image-file data layers: ``ImageData`` (a list of image files with labels) and
``WindowData`` (R-CNN style windows cut out of listed images), ``image_data_layer.cpp`` and
``window_data_layer.cpp``.

Images are decoded by OpenCV as Caffe does (``cv::imread``: BGR channel order for colour).
Paths (``source``, ``mean_file``, and the image paths inside the list files after
``root_folder`` is prepended, by plain string concatenation as in Caffe) resolve like the Data
layer's: against the working directory, or against the layer's ``base_dir`` when set. Random
choices (shuffling, window sampling, mirroring) draw from generators seeded by ``engine.rng``.
Batches are read when ``forward`` asks for them (no prefetch thread: the draws and the order
are the same).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from caffeseg.engine import rng
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.layer_types.data import resolve_path
from caffeseg.engine.transformer import TransformError, Transformer


def _seeded_generator() -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng.generator("cpu"))))


def _caffe_rng_rand() -> int:
    """One draw of Caffe's caffe_rng_rand(): an unsigned 32-bit integer, from engine.rng."""
    return int(torch.randint(0, 2**32, (1,), generator=rng.generator("cpu")))


def _read_lines(layer: Layer, path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise layer.fail(f"cannot open source file {path}: {err.strerror}") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline ending the last line opens no new one (std::getline)
    return [os.fsdecode(line.rstrip(b"\r")) for line in lines]


def _chw(image: np.ndarray) -> np.ndarray:
    """An OpenCV H x W (x C) image as C x H x W."""
    return image[np.newaxis] if image.ndim == 2 else image.transpose(2, 0, 1)


@register
class ImageDataLayer(Layer):
    """Caffe ``ImageData``: images named in a list file, with integer labels.

    The list is read in order and wraps around; images are decoded by OpenCV (BGR).

    Parameters (``image_data_param``): ``source`` (required; lines ``path label``, the label
    after the LAST space, so paths may contain spaces), ``root_folder`` (prepended to every
    path, default empty), ``batch_size`` (> 0, default 1), ``shuffle`` (default false; at setup
    and at every wrap), ``rand_skip`` (default 0: skip a random number of lines below it at
    setup), ``new_height``/``new_width`` (default 0: no resize; both or neither, bilinear),
    ``is_color`` (default true; false: one gray channel). ``transform_param`` (``crop_size``,
    ``mirror``, ``mean_file``/``mean_value``, ``scale``) applies per image as for the Data layer.
    No blobs.

    Shape (C = 3 with ``is_color``, else 1):
        - no bottoms
        - top 0 (``data``): ``(batch_size, C, H, W)``: ``H = W = crop_size`` when set, else the
          image's size after ``new_height``/``new_width``; each batch takes its first image's
          size, and an image of another size in the batch is an error
        - top 1 (``label``): ``(batch_size,)``, the labels as floats"""

    type = "ImageData"
    exact_bottoms = 0
    exact_tops = 2
    #: directory that relative paths resolve against (None = cwd, like Caffe)
    base_dir: str | None = None

    def setup(self, bottom_shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        ip = self.param.image_data_param
        self.new_height, self.new_width = int(ip.new_height), int(ip.new_width)
        if (self.new_height > 0) != (self.new_width > 0):
            raise self.fail("new_height and new_width must be set together (both positive, or neither)")
        if ip.batch_size <= 0:
            raise self.fail("image_data_param.batch_size must be positive")
        if not ip.source:
            raise self.fail("image_data_param.source is required (a list file of 'path label' lines)")
        self.batch_size = int(ip.batch_size)
        self.is_color = bool(ip.is_color)
        self.shuffle = bool(ip.shuffle)
        self.root_folder = ip.root_folder
        self.source = resolve_path(ip.source, self.base_dir)
        self.lines = self._parse(_read_lines(self, self.source))
        if not self.lines:
            raise self.fail(f"{self.source} lists no image")
        where = f"layer '{self.name}' ({self.type}) transform_param"
        try:
            self.transformer = Transformer(self.param.transform_param, self.phase, where, self.base_dir)
        except TransformError as err:
            raise self.fail(str(err)) from None
        self._gen = None
        if self.shuffle:
            self._gen = _seeded_generator()
            self._shuffle()
        self.position = 0
        if ip.rand_skip:
            skip = _caffe_rng_rand() % int(ip.rand_skip)
            if skip >= len(self.lines):
                raise self.fail(f"rand_skip drew {skip}, but {self.source} lists only {len(self.lines)} images")
            self.position = skip
        self.item_shape = self._output_shape(self._load(self.position))
        return []

    def _parse(self, lines: list[str]) -> list[tuple[str, int, int]]:
        """(path, label, line number) per line, the label after the last space."""
        parsed = []
        for number, line in enumerate(lines, 1):
            where = f"{self.source} line {number}"
            pos = line.rfind(" ")
            if pos < 0:
                raise self.fail(f"{where}: expected 'path label' (a space, then an integer label), got {line!r}")
            path, label = line[:pos], line[pos + 1:]
            try:
                value = int(label)
            except ValueError:
                raise self.fail(f"{where}: the label after the last space must be an integer, got {label!r}") from None
            if not path:
                raise self.fail(f"{where}: the line has no image path before the label")
            parsed.append((path, value, number))
        return parsed

    def _shuffle(self) -> None:
        order = self._gen.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def _load(self, index: int) -> np.ndarray:
        """The C x H x W uint8 image of list entry ``index``, decoded and resized as Caffe does."""
        import cv2
        path, _, number = self.lines[index]
        full = resolve_path(self.root_folder + path, self.base_dir)
        image = cv2.imread(full, cv2.IMREAD_COLOR if self.is_color else cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise self.fail(f"could not load image {full} ({self.source} line {number}): the file is missing "
                            "or not an image OpenCV can decode")
        if self.new_height > 0:
            image = cv2.resize(image, (self.new_width, self.new_height))
        return _chw(image)

    def _output_shape(self, chw: np.ndarray) -> tuple[int, ...]:
        try:
            return self.transformer.output_shape(tuple(chw.shape))
        except TransformError as err:
            raise self.fail(str(err)) from None

    def reshape(self, bottom_shapes):
        return [(self.batch_size,) + tuple(self.item_shape), (self.batch_size,)]

    def forward(self, bottoms, params):
        data = None
        labels = np.zeros(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            image = self._load(self.position)
            path, label, number = self.lines[self.position]
            try:
                out = self.transformer(image)
            except TransformError as err:
                raise self.fail(f"{path} ({self.source} line {number}): {err}") from None
            if data is None:
                data = np.empty((self.batch_size,) + out.shape, dtype=np.float32)  # shaped by the first image
            elif out.shape != data.shape[1:]:
                raise self.fail(f"{path} ({self.source} line {number}) gives an item of shape {out.shape}, the "
                                f"batch's first image {data.shape[1:]}; set new_height/new_width or crop_size "
                                "so every image of a batch has the same size")
            data[i] = out
            labels[i] = label
            self.position += 1
            if self.position >= len(self.lines):
                self.position = 0
                if self.shuffle:
                    self._shuffle()
        self.item_shape = data.shape[1:]
        return [torch.from_numpy(data), torch.from_numpy(labels)]


def _round(value: float) -> int:
    """C's round(): halves away from zero (Python's round() would round them to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


class _WindowFile:
    """The tokens of a window file with their line numbers, read in order."""

    def __init__(self, layer: Layer, path: str):
        self.layer, self.path = layer, path
        self.tokens: list[tuple[str, int]] = []
        for number, line in enumerate(_read_lines(layer, path), 1):
            self.tokens.extend((token, number) for token in line.split())
        self.index = 0

    def more(self) -> bool:
        return self.index < len(self.tokens)

    def take(self, what: str, kind=str):
        if not self.more():
            last = self.tokens[-1][1] if self.tokens else 1
            raise self.layer.fail(f"{self.path} line {last}: the file ends where {what} should follow")
        token, number = self.tokens[self.index]
        self.index += 1
        try:
            return kind(token), number
        except ValueError:
            expected = {int: "an integer", float: "a number"}.get(kind, "a value")
            raise self.layer.fail(f"{self.path} line {number}: {what} must be {expected}, got {token!r}") from None


@register
class WindowDataLayer(Layer):
    """Caffe ``WindowData``: foreground and background windows cut from listed images and warped.

    A batch holds ``batch_size − int(batch_size · fg_fraction)`` background windows first, then
    the foreground ones, each drawn at random (uniformly) from its set, as Caffe does; each is
    warped to ``crop_size`` square, parts outside the image left 0, and ``(pixel − mean)·scale``.

    Parameters (``window_data_param``): ``source`` (required; the window file: per image
    ``# index``, image path, channels (3), height, width, window count, then one
    ``label overlap x1 y1 x2 y2`` line per window), ``root_folder`` (default empty),
    ``batch_size`` (> 0), ``fg_threshold`` (default 0.5; overlap ≥ it: foreground, label > 0),
    ``bg_threshold`` (default 0.5; overlap < it: background, label 0; windows between are
    dropped), ``fg_fraction`` (default 0.25, in [0, 1]), ``context_pad`` (default 0: pixels of
    context around the warped window), ``crop_mode`` (``warp``, the default, or ``square``),
    ``cache_images`` (default false; true: keep the encoded files in memory), ``scale`` (default
    1, applied after the mean). ``transform_param``: ``crop_size`` (required, > 2·context_pad),
    ``mirror``, ``mean_file`` (its centred crop_size square is used) or ``mean_value`` (1 or 3
    values). No blobs.

    Shape (every image is decoded as colour: 3 channels, BGR):
        - no bottoms
        - top 0 (``data``): ``(batch_size, 3, crop_size, crop_size)``
        - top 1 (``label``): ``(batch_size,)``, the window labels as floats (0 for background)"""

    type = "WindowData"
    exact_bottoms = 0
    exact_tops = 2
    #: directory that relative paths resolve against (None = cwd, like Caffe)
    base_dir: str | None = None

    def setup(self, bottom_shapes):
        wp = self.param.window_data_param
        tp = self.param.transform_param
        if not wp.source:
            raise self.fail("window_data_param.source is required (a window file)")
        if wp.batch_size <= 0:
            raise self.fail("window_data_param.batch_size must be positive")
        self.crop_size = int(tp.crop_size)
        if self.crop_size <= 0:
            raise self.fail("transform_param.crop_size must be positive (the size windows are warped to)")
        if wp.crop_mode not in ("warp", "square"):
            raise self.fail(f"window_data_param.crop_mode must be 'warp' or 'square', got {wp.crop_mode!r}")
        self.context_pad = int(wp.context_pad)
        if 2 * self.context_pad >= self.crop_size and (self.context_pad > 0 or wp.crop_mode == "square"):
            raise self.fail(f"context_pad {self.context_pad} leaves no room in crop_size {self.crop_size}")
        self.batch_size = int(wp.batch_size)
        self.square = wp.crop_mode == "square"
        self.mirror = bool(tp.mirror)
        self.scale = np.float32(wp.scale)
        self.cache_images = bool(wp.cache_images)
        self.source = resolve_path(wp.source, self.base_dir)
        self._read_windows(wp)
        if not self.fg_windows:
            raise self.fail(f"{self.source} has no foreground window (overlap >= fg_threshold {wp.fg_threshold})")
        if not self.bg_windows:
            raise self.fail(f"{self.source} has no background window (overlap < bg_threshold {wp.bg_threshold})")
        self._read_mean(tp)
        self.num_fg = int(np.float32(self.batch_size) * np.float32(wp.fg_fraction))
        if not 0 <= self.num_fg <= self.batch_size:
            raise self.fail(f"fg_fraction {wp.fg_fraction} must lie between 0 and 1")
        self._gen = _seeded_generator()
        return []

    def _read_windows(self, wp) -> None:
        reader = _WindowFile(self, self.source)
        if not reader.more():
            raise self.fail(f"window file {self.source} is empty")
        fg_threshold, bg_threshold = np.float32(wp.fg_threshold), np.float32(wp.bg_threshold)
        self.images: list[str] = []
        self.cache: list[bytes] = []
        self.fg_windows: list[tuple] = []
        self.bg_windows: list[tuple] = []
        channels = 0
        while reader.more():
            hashtag, number = reader.take("'#'")
            if hashtag != "#":
                raise self.fail(f"{self.source} line {number}: expected '# <image index>', got {hashtag!r}")
            index, number = reader.take("the image index", int)
            if index != len(self.images):
                raise self.fail(f"{self.source} line {number}: image index {index}, expected {len(self.images)}; "
                                "WindowData looks images up by this index, so they count 0, 1, 2... in file order")
            path, _ = reader.take("the image path")
            path = resolve_path(wp.root_folder + path, self.base_dir)
            channels, number = reader.take("the image channels", int)
            if channels != 3:
                raise self.fail(f"{self.source} line {number}: {channels} channels; WindowData decodes every image "
                                "as colour (3 channels)")
            reader.take("the image height", int)
            reader.take("the image width", int)
            self.images.append(path)
            if self.cache_images:
                try:
                    with open(path, "rb") as f:
                        self.cache.append(f.read())
                except OSError as err:
                    raise self.fail(f"could not open or find file {path} ({self.source}): {err.strerror}") from None
            count, _ = reader.take("the window count", int)
            for _ in range(count):
                label, number = reader.take("a window label", int)
                overlap, _ = reader.take("a window overlap", float)
                x1, _ = reader.take("x1", int)
                y1, _ = reader.take("y1", int)
                x2, _ = reader.take("x2", int)
                y2, _ = reader.take("y2", int)
                overlap = np.float32(overlap)
                window = (index, label, x1, y1, x2, y2, number)
                if overlap >= fg_threshold:
                    if label <= 0:
                        raise self.fail(f"{self.source} line {number}: a foreground window needs a label > 0, "
                                        f"got {label}")
                    self.fg_windows.append(window)
                elif overlap < bg_threshold:
                    self.bg_windows.append((index, 0, x1, y1, x2, y2, number))
        self.channels = channels

    def _read_mean(self, tp) -> None:
        self.mean_blob = None
        self.mean_values = None
        if tp.HasField("mean_file") and len(tp.mean_value):
            raise self.fail("cannot specify mean_file and mean_value at the same time")
        if tp.HasField("mean_file"):
            from caffeseg.engine.blobproto import read_binaryproto
            path = resolve_path(tp.mean_file, self.base_dir)
            try:
                mean = read_binaryproto(path)
            except (OSError, ValueError) as err:
                raise self.fail(f"cannot read mean_file {path}: {err}") from None
            while mean.ndim > 3 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3 or mean.shape[0] < self.channels:
                raise self.fail(f"mean_file {path} has shape {mean.shape}; expected 1 x {self.channels} x H x W")
            # Caffe reads the mean at a centred offset computed from its width, on both axes
            offset = (mean.shape[2] - self.crop_size) // 2
            if offset < 0 or offset + self.crop_size > mean.shape[1]:
                raise self.fail(f"mean_file {path} ({mean.shape[1]} x {mean.shape[2]}) does not hold a centred "
                                f"crop_size {self.crop_size} square")
            self.mean_blob = mean.astype(np.float32)
        elif len(tp.mean_value):
            values = np.asarray(tp.mean_value, dtype=np.float32)
            if len(values) not in (1, self.channels):
                raise self.fail(f"specify either 1 mean_value or as many as channels: {self.channels}")
            self.mean_values = np.broadcast_to(values, (self.channels,)).copy()

    def reshape(self, bottom_shapes):
        return [(self.batch_size, self.channels, self.crop_size, self.crop_size), (self.batch_size,)]

    def _rand(self) -> int:
        return int(self._gen.integers(0, 2**32))  # Caffe's PrefetchRand(): an unsigned 32-bit draw

    def _image(self, index: int) -> np.ndarray:
        import cv2
        if self.cache_images:
            image = cv2.imdecode(np.frombuffer(self.cache[index], dtype=np.uint8), cv2.IMREAD_COLOR)
        else:
            image = cv2.imread(self.images[index], cv2.IMREAD_COLOR)
        if image is None:
            raise self.fail(f"could not open or find file {self.images[index]} (listed in {self.source}), or "
                            "OpenCV cannot decode it")
        return image

    def _geometry(self, window, rows: int, cols: int, do_mirror: bool):
        """(roi x1, y1, x2, y2, warped width, height, pad_w, pad_h), in Caffe's float32 arithmetic."""
        f32 = np.float32
        _, _, x1, y1, x2, y2, number = window
        crop = self.crop_size
        out_w = out_h = crop
        pad_w = pad_h = 0
        if self.context_pad > 0 or self.square:
            context_scale = f32(crop) / f32(crop - 2 * self.context_pad)
            half_height = f32((y2 - y1 + 1) / 2.0)
            half_width = f32((x2 - x1 + 1) / 2.0)
            center_x = f32(x1) + half_width
            center_y = f32(y1) + half_height
            if self.square:
                half_width = half_height = max(half_width, half_height)
            x1 = _round(float(center_x - half_width * context_scale))
            x2 = _round(float(center_x + half_width * context_scale))
            y1 = _round(float(center_y - half_height * context_scale))
            y2 = _round(float(center_y + half_height * context_scale))
            unclipped_height, unclipped_width = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            if not (x1 >= 0 and y1 >= 0 and x2 < cols and y2 < rows and x1 <= x2 and y1 <= y2):
                raise self.fail(f"{self.source} line {number}: the window does not overlap its image "
                                f"({cols} x {rows})")
            scale_x = f32(crop) / f32(unclipped_width)
            scale_y = f32(crop) / f32(unclipped_height)
            out_w = _round(float(f32(x2 - x1 + 1) * scale_x))
            out_h = _round(float(f32(y2 - y1 + 1) * scale_y))
            pad_x1 = _round(float(f32(pad_x1) * scale_x))
            pad_x2 = _round(float(f32(pad_x2) * scale_x))
            pad_y1 = _round(float(f32(pad_y1) * scale_y))
            pad_h = pad_y1
            pad_w = pad_x2 if do_mirror else pad_x1  # the padding is mirrored too
            out_h = min(out_h, crop - pad_h)
            out_w = min(out_w, crop - pad_w)
        elif not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows):
            raise self.fail(f"{self.source} line {number}: window ({x1}, {y1}, {x2}, {y2}) lies outside its image "
                            f"({cols} x {rows}); with crop_mode warp and no context_pad it must fit inside")
        if out_w <= 0 or out_h <= 0:
            raise self.fail(f"{self.source} line {number}: the window warps to nothing at crop_size {crop}")
        return x1, y1, x2, y2, out_w, out_h, pad_w, pad_h

    def forward(self, bottoms, params):
        import cv2
        crop = self.crop_size
        data = np.zeros((self.batch_size, self.channels, crop, crop), dtype=np.float32)
        labels = np.zeros(self.batch_size, dtype=np.float32)
        mean_off = (self.mean_blob.shape[2] - crop) // 2 if self.mean_blob is not None else 0
        item = 0
        for windows, samples in ((self.bg_windows, self.batch_size - self.num_fg), (self.fg_windows, self.num_fg)):
            for _ in range(samples):
                window = windows[self._rand() % len(windows)]
                do_mirror = self.mirror and self._rand() % 2 == 1
                image = self._image(window[0])
                x1, y1, x2, y2, out_w, out_h, pad_w, pad_h = self._geometry(
                    window, image.shape[0], image.shape[1], do_mirror)
                warped = cv2.resize(image[y1:y2 + 1, x1:x2 + 1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
                if do_mirror:
                    warped = cv2.flip(warped, 1)
                pixels = _chw(warped).astype(np.float32)
                rows, cols = pixels.shape[1:]
                if self.mean_blob is not None:
                    top, left = mean_off + pad_h, mean_off + pad_w
                    pixels = pixels - self.mean_blob[:self.channels, top:top + rows, left:left + cols]
                elif self.mean_values is not None:
                    pixels = pixels - self.mean_values.reshape(-1, 1, 1)
                data[item, :, pad_h:pad_h + rows, pad_w:pad_w + cols] = pixels * self.scale
                labels[item] = window[1]
                item += 1
        return [torch.from_numpy(data), torch.from_numpy(labels)]
