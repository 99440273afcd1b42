"""Caffe's ``Data`` layer: Datum records from an LMDB, transformed, prefetched in a thread.

Semantics (Caffe's ``DataLayer`` with its ``DataTransformer``):

* records are read in key order; after the last one the cursor wraps to the first, so a
  batch may straddle the end (nothing is shuffled);
* the batch shape comes from the first record: ``[batch_size, C, crop or H, crop or W]``;
  the optional second top holds ``float(datum.label)``, shape ``[batch_size]``;
* ``backend`` defaults to LEVELDB in Caffe; only LMDB is supported here, so a layer without
  ``backend: LMDB`` is rejected with a message saying so;
* relative ``source`` and ``mean_file`` paths resolve against the process working directory,
  as in Caffe. A net that wants them relative to its prototxt sets ``DataLayer.base_dir``
  (class attribute or per instance) before ``setup``;
* a background thread fills a queue of ``prefetch`` batches, so ``forward`` only dequeues.

Two Data layers (DIGITS-style features + labels) stay aligned record for record because each
walks its own database in key order with the same batch size. Their random mirror/crop draws
are independent, exactly as in Caffe: give random transforms to one of them only (DIGITS
segmentation label databases carry no crop/mirror).
"""
from __future__ import annotations

import os
import queue
import threading
import weakref
from typing import Sequence

import numpy as np
import torch

from caffeseg.engine import rng, runtime
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.transformer import TransformError, Transformer


def resolve_path(path: str, base_dir: str | None) -> str:
    """A path named in a data layer's parameters (or in its list files), as the layer opens it:
    relative paths against the working directory as in Caffe, or against ``base_dir`` when set."""
    if base_dir and not os.path.isabs(path):
        return os.path.join(base_dir, path)
    return path


def decode_record(raw: bytes, tp: caffe_pb2.TransformationParameter, where: str):
    """Datum bytes -> (C x H x W array, label), honouring force_color / force_gray."""
    from caffeseg.engine.datum import datum_to_array, parse_datum
    datum = parse_datum(raw, where)
    if datum.encoded and (tp.force_color or tp.force_gray):
        import cv2
        flag = cv2.IMREAD_COLOR if tp.force_color else cv2.IMREAD_GRAYSCALE
        image = cv2.imdecode(np.frombuffer(datum.data, dtype=np.uint8), flag)
        if image is None:
            raise TransformError(f"{where}: encoded Datum is not an image OpenCV can decode")
        array = image[np.newaxis] if image.ndim == 2 else image.transpose(2, 0, 1)
        return np.ascontiguousarray(array), datum.label
    return datum_to_array(datum), datum.label


class _SharedReaders:
    """One open LmdbReader per database path for the whole process.

    LMDB refuses to open the same environment twice in one process, and a train net and its
    test net (or two solvers) often read the same database; every user gets its own cursor
    and read transaction on the shared environment instead.
    """

    _lock = threading.Lock()
    _open: dict[str, list] = {}

    @classmethod
    def acquire(cls, path: str):
        from caffeseg.engine.lmdb_io import LmdbReader
        key = os.path.realpath(path)
        with cls._lock:
            entry = cls._open.get(key)
            if entry is None:
                entry = cls._open[key] = [LmdbReader(path), 0]
            entry[1] += 1
            return entry[0]

    @classmethod
    def release(cls, path: str):
        key = os.path.realpath(path)
        with cls._lock:
            entry = cls._open.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                entry[0].close()
                del cls._open[key]


class _RecordCursor:
    """Endless key-order walk over an LMDB, wrapping at the end (Caffe's DB cursor + SeekToFirst)."""

    def __init__(self, path: str, skip: int = 0, shard: tuple[int, int] = (0, 1)):
        self.path = path
        self.reader = _SharedReaders.acquire(path)
        if len(self.reader) == 0:
            raise TransformError(f"{path}: the LMDB database is empty")
        self._items = self.reader.items()
        for _ in range(skip):
            self.next()
        self.rank, self.ranks = shard
        self.offset = 0  # records of the stream passed so far (Caffe's DataLayer offset_)

    def next_kept(self) -> tuple[str, bytes]:
        """The next record of this rank's shard: stream record k when ``k % ranks == rank``
        (Caffe's ``DataLayer::Skip`` in multi-device training; every record with one rank)."""
        while self.offset % self.ranks != self.rank:
            self.next()
            self.offset += 1
        self.offset += 1
        return self.next()

    def next(self) -> tuple[str, bytes]:
        try:
            return next(self._items)
        except StopIteration:
            self._items = self.reader.items()
            return next(self._items)

    def close(self):
        self._items = iter(())
        _SharedReaders.release(self.path)


class _Prefetcher:
    """The background producer: reads, decodes and transforms batches into a bounded queue."""

    def __init__(self, source, skip, batch_size, transform_param, transformer, out_queue, stop, shard=(0, 1)):
        self.source, self.skip, self.batch_size, self.shard = source, skip, batch_size, shard
        self.transform_param, self.transformer = transform_param, transformer
        self.queue, self.stop = out_queue, stop

    def run(self):
        try:
            cursor = _RecordCursor(self.source, self.skip, self.shard)
        except Exception as err:  # surfaced on the next forward
            self.put(err)
            return
        try:
            while not self.stop.is_set():
                try:
                    batch = self.load_batch(cursor)
                except Exception as err:
                    self.put(err)
                    return
                self.put(batch)
        finally:
            cursor.close()

    def put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def load_batch(self, cursor: _RecordCursor):
        data = None
        labels = np.zeros(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            key, raw = cursor.next_kept()
            where = f"{self.source} key \"{key}\""
            item, label = decode_record(raw, self.transform_param, where)
            out = self.transformer(item)
            if data is None:
                # Caffe shapes each batch from its first datum
                data = np.empty((self.batch_size,) + out.shape, dtype=np.float32)
            if out.shape != data.shape[1:]:
                raise TransformError(f"{where}: item shape {tuple(item.shape)} differs from the batch's "
                                     f"first item; every record of a Data layer batch must have the same size")
            data[i] = out
            labels[i] = float(label)
        return data, labels


@register
class DataLayer(Layer):
    """Caffe ``Data``: batches of Datum records from an LMDB, transformed (see the module docstring).

    Parameters (``data_param``): ``source`` (required), ``backend`` (LMDB required),
    ``batch_size`` (> 0), ``rand_skip``, ``prefetch``; ``transform_param``: ``scale``, ``mirror``,
    ``crop_size``, ``mean_file`` or ``mean_value``.

    Shape:
        - no bottoms
        - top 0: ``(batch_size, C, H', W')`` (H', W' = ``crop_size`` when cropping)
        - optional top 1 (labels): ``(batch_size,)``"""

    type = "Data"
    exact_bottoms = 0
    min_tops = 1
    max_tops = 2
    #: directory that relative source/mean_file paths resolve against (None = cwd, like Caffe)
    base_dir: str | None = None

    def _path(self, path: str) -> str:
        return resolve_path(path, self.base_dir)

    def setup(self, bottom_shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        dp = self.param.data_param
        if not dp.HasField("source") or not dp.source:
            raise self.fail("data_param.source is required")
        if dp.backend != caffe_pb2.DataParameter.LMDB:
            raise self.fail(
                "data_param.backend is LEVELDB (Caffe's default when backend is not given); only LMDB "
                "databases are supported: add 'backend: LMDB' and convert the database if needed")
        if dp.batch_size <= 0:
            raise self.fail("data_param.batch_size must be positive")
        self.batch_size = int(dp.batch_size)
        self.has_label = len(self.param.top) == 2
        self.source = self._path(dp.source)
        where = f"layer '{self.name}' ({self.type}) transform_param"
        try:
            self.transformer = Transformer(self.param.transform_param, self.phase, where, self.base_dir)
            from caffeseg.engine.lmdb_io import LmdbError
            try:
                probe = _SharedReaders.acquire(self.source)
            except LmdbError as err:
                raise self.fail(f"cannot open data_param.source: {err}") from None
            try:
                first = probe.first()
            finally:
                _SharedReaders.release(self.source)
            if first is None:
                raise self.fail(f"data_param.source {self.source} is an empty database")
            # The first record fixes the shape but is not consumed (the first batch starts at it)
            item, _ = decode_record(first[1], self.param.transform_param, f"{self.source} key \"{first[0]}\"")
            self.item_shape = self.transformer.output_shape(tuple(item.shape))
        except TransformError as err:
            raise self.fail(str(err)) from None
        skip = 0
        if dp.rand_skip:
            # Caffe's (deprecated) rand_skip: start a random number of records in
            skip = int(torch.randint(0, int(dp.rand_skip), (1,), generator=rng.generator("cpu")))
        self.skip = skip
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(dp.prefetch)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        return []

    def reshape(self, bottom_shapes):
        shapes = [(self.batch_size,) + tuple(self.item_shape)]
        if self.has_label:
            shapes.append((self.batch_size,))
        return shapes

    # -- prefetching ---------------------------------------------------------------------
    def _start(self):
        # Multi-device training (engine.parallel): each TRAIN rank reads its own shard; TEST
        # nets (rank 0 only) read everything, as Caffe's DataLayer::Skip.
        shard = (runtime.solver_rank(), runtime.solver_count()) if self.phase == caffe_pb2.TRAIN else (0, 1)
        prefetcher = _Prefetcher(self.source, self.skip, self.batch_size, self.param.transform_param,
                                 self.transformer, self._queue, self._stop, shard)
        self._thread = threading.Thread(target=prefetcher.run, name=f"prefetch-{self.name}", daemon=True)
        # The thread holds no reference to the layer, so a dropped net is collected and this
        # finalizer stops its thread (and releases the database).
        weakref.finalize(self, self._stop.set)
        self._thread.start()

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next prefetched (data, labels) batch as numpy arrays."""
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, Exception):
            raise self.fail(str(item)) from item
        return item

    def forward(self, bottoms, params):
        data, labels = self.next_batch()
        tops = [torch.from_numpy(data)]
        if self.has_label:
            tops.append(torch.from_numpy(labels))
        return tops

    def close(self):
        """Stop the prefetch thread (it is a daemon, so this is optional at exit)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2)
            self._thread = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
