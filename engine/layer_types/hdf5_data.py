"""Caffe's HDF5 layers: ``HDF5Data`` reads batches from HDF5 files, ``HDF5Output`` writes its
bottoms to one (``hdf5_data_layer.cpp``, ``hdf5_output_layer.cpp``), through h5py.

Paths (``source``, the files it lists, ``file_name``) resolve like the Data layer's: against
the working directory as in Caffe, or against the layer's ``base_dir`` when it is set.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from caffeseg.engine import rng
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.layer_types.data import resolve_path

# the dataset names Caffe's HDF5Output writes (HDF5_DATA_DATASET_NAME, HDF5_DATA_LABEL_NAME)
OUTPUT_DATA_NAME = "data"
OUTPUT_LABEL_NAME = "label"


def _h5py():
    import h5py  # a heavy import, needed only by nets with HDF5 layers
    return h5py


def _permutation(size: int) -> np.ndarray:
    return torch.randperm(size, generator=rng.generator("cpu")).numpy()


@register
class HDF5DataLayer(Layer):
    """Caffe ``HDF5Data``: rows of HDF5 datasets, one dataset per top, named after the top.

    ``hdf5_data_param``: ``source`` (a text file listing HDF5 file paths, whitespace separated),
    ``batch_size``, ``shuffle``. No bottoms; top ``k`` has shape ``(batch_size, *D_k)`` where
    the first listed file's dataset ``top[k]`` has shape ``(rows, *D_k)``. Every dataset of a
    file has the same number of rows; float and integer datasets are read as float32.

    Rows are served in order (or a random permutation per file with ``shuffle``, the file order
    reshuffled at every wrap); a batch runs on into the next file and wraps around after the
    last. A transform_param is refused, as in Caffe.
    """

    type = "HDF5Data"
    exact_bottoms = 0
    min_tops = 1
    #: directory that relative paths resolve against (None = cwd, like Caffe)
    base_dir: str | None = None

    def setup(self, bottom_shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        hp = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise self.fail("HDF5Data does not transform data: remove transform_param "
                            "(store the data already transformed in the HDF5 files)")
        if not hp.source:
            raise self.fail("hdf5_data_param.source is required (a text file listing HDF5 files)")
        if hp.batch_size <= 0:
            raise self.fail("hdf5_data_param.batch_size must be positive")
        self.batch_size = int(hp.batch_size)
        self.shuffle = bool(hp.shuffle)
        self.source = resolve_path(hp.source, self.base_dir)
        try:
            with open(self.source) as listing:
                names = listing.read().split()
        except OSError as err:
            raise self.fail(f"cannot open hdf5_data_param.source {self.source}: {err.strerror}") from None
        if not names:
            raise self.fail(f"{self.source} lists no HDF5 file; write one path per line")
        self.files = [resolve_path(name, self.base_dir) for name in names]
        self.file_order = _permutation(len(self.files)) if self.shuffle else np.arange(len(self.files))
        self.current_file = 0
        self._load(self.files[self.file_order[0]])
        self.current_row = 0
        self.item_shapes = [tuple(a.shape[1:]) for a in self.arrays]
        return []

    def _load(self, path: str) -> None:
        """Read every top's dataset of one file (Caffe's LoadHDF5FileData)."""
        h5py = _h5py()
        try:
            handle = h5py.File(path, "r")
        except (OSError, ValueError) as err:
            raise self.fail(f"failed opening HDF5 file {path} (listed in {self.source}): {err}") from None
        arrays = []
        with handle:
            for name in self.param.top:
                if name not in handle or not isinstance(handle[name], h5py.Dataset):
                    present = ", ".join(k for k in handle if isinstance(handle[k], h5py.Dataset)) or "none"
                    raise self.fail(f"HDF5 file {path} has no dataset '{name}' (datasets are named after the "
                                    f"layer's tops; the file has: {present})")
                dataset = handle[name]
                if dataset.dtype.kind not in "fiu":
                    raise self.fail(f"dataset '{name}' of {path} has type {dataset.dtype}; Caffe reads only "
                                    "float and integer datasets")
                if dataset.ndim < 1:
                    raise self.fail(f"dataset '{name}' of {path} is a scalar; it needs at least 1 axis (rows)")
                arrays.append(np.ascontiguousarray(dataset[()], dtype=np.float32))
        rows = arrays[0].shape[0]
        for name, array in zip(self.param.top, arrays):
            if array.shape[0] != rows:
                raise self.fail(f"HDF5 file {path}: dataset '{name}' has {array.shape[0]} rows, dataset "
                                f"'{self.param.top[0]}' has {rows}; every dataset needs the same number of rows")
        if rows == 0:
            raise self.fail(f"HDF5 file {path} has datasets without rows")
        if hasattr(self, "item_shapes"):
            for name, array, shape in zip(self.param.top, arrays, self.item_shapes):
                if tuple(array.shape[1:]) != shape:
                    raise self.fail(f"dataset '{name}' of {path} has rows of shape {tuple(array.shape[1:])}; "
                                    f"the first file's rows are {shape} (the top shape is fixed at setup)")
        self.arrays = arrays
        self.rows = rows
        self.row_order = _permutation(rows) if self.shuffle else np.arange(rows)

    def reshape(self, bottom_shapes):
        return [(self.batch_size,) + shape for shape in self.item_shapes]

    def _next(self) -> None:
        """Advance one row: across files, wrapping, reshuffling as Caffe's Next() does."""
        self.current_row += 1
        if self.current_row == self.rows:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self.file_order = _permutation(len(self.files))
                self._load(self.files[self.file_order[self.current_file]])
            self.current_row = 0
            if self.shuffle:
                self.row_order = _permutation(self.rows)

    def forward(self, bottoms, params):
        tops = [np.empty((self.batch_size,) + shape, dtype=np.float32) for shape in self.item_shapes]
        for i in range(self.batch_size):
            row = self.row_order[self.current_row]
            for top, array in zip(tops, self.arrays):
                top[i] = array[row]
            self._next()
        return [torch.from_numpy(top) for top in tops]


@register
class HDF5OutputLayer(Layer):
    """Caffe ``HDF5Output``: writes its two bottoms to ``hdf5_output_param.file_name``.

    Bottoms: ``data`` (N, ...) and ``label`` (N, ...), at most 4 axes each; no tops. The file is
    created (truncated) when the layer is set up; a forward writes datasets ``data`` and
    ``label`` as 4-D float32 ``(N, C, H, W)`` (missing axes are 1, Caffe's legacy shape). Caffe
    writes each dataset once per file, so a second forward is an error; the file closes with
    the net (or ``close()``). No gradient flows back.
    """

    type = "HDF5Output"
    exact_bottoms = 2
    exact_tops = 0
    #: directory that a relative file_name resolves against (None = cwd, like Caffe)
    base_dir: str | None = None

    def setup(self, bottom_shapes):
        name = self.param.hdf5_output_param.file_name
        if not name:
            raise self.fail("hdf5_output_param.file_name is required")
        self.file_name = resolve_path(name, self.base_dir)
        self._file = None
        try:
            self._file = _h5py().File(self.file_name, "w")
        except (OSError, ValueError) as err:
            raise self.fail(f"failed to create HDF5 file {self.file_name}: {err}") from None
        return []

    def reshape(self, bottom_shapes):
        for index, shape in enumerate(bottom_shapes):
            if len(shape) > 4:
                raise self.fail(f"bottom {index} has shape {tuple(shape)}; HDF5Output writes at most 4 axes "
                                "(num, channels, height, width)")
        if bottom_shapes[0][:1] != bottom_shapes[1][:1]:
            raise self.fail(f"data {tuple(bottom_shapes[0])} and label {tuple(bottom_shapes[1])} must have "
                            "the same batch size (axis 0)")
        return []

    @staticmethod
    def _legacy_4d(array: np.ndarray) -> np.ndarray:
        shape = tuple(array.shape) + (1,) * (4 - array.ndim)
        return np.ascontiguousarray(array, dtype=np.float32).reshape(shape)

    def forward(self, bottoms, params):
        if self._file is None:
            raise self.fail(f"{self.file_name} is closed")
        data, label = (b.detach().cpu().numpy() for b in bottoms)
        if data.shape[:1] != label.shape[:1]:
            raise self.fail("data and label blob must have the same batch size")
        for dataset, array in ((OUTPUT_DATA_NAME, data), (OUTPUT_LABEL_NAME, label)):
            if dataset in self._file:
                raise self.fail(f"{self.file_name} already holds dataset '{dataset}': Caffe's HDF5Output writes "
                                "one batch per file (one forward per net)")
            self._file.create_dataset(dataset, data=self._legacy_4d(array))
        self._file.flush()
        return []

    def close(self) -> None:
        """Close the file (Caffe closes it when the net is destroyed)."""
        handle, self._file = getattr(self, "_file", None), None
        if handle is not None:
            handle.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
