"""LMDB databases of Datum records, as Caffe's Data layer and DIGITS use them.

``LmdbWriter`` commits puts in batches (one transaction per ``batch_size`` records) and grows
the map size when LMDB reports it full instead of failing. ``LmdbReader`` opens read-only
without locking (safe while another process reads it), iterates in key order (LMDB's sorted
byte order, which is the order Caffe's cursor visits), gives random access by key and a few
helpers for Datum databases.

Keys are ``str`` on the Python side and stored as UTF-8 bytes.
"""

import os

import lmdb

from caffeseg.engine.datum import bytes_to_array

_MISSING = object()


class LmdbError(ValueError):
    """A path that is not a readable LMDB database, or a missing key."""


def _key_bytes(key):
    return key if isinstance(key, bytes) else str(key).encode("utf-8", "surrogateescape")


def _key_str(key):
    return bytes(key).decode("utf-8", "surrogateescape")


class LmdbWriter:
    """Write records into an LMDB directory (created if needed)::

        with LmdbWriter("train_db") as db:
            db.put("00000000", datum.SerializeToString())
    """

    def __init__(self, path, batch_size=256, map_size=1 << 26):
        self.path = str(path)
        self.batch_size = max(1, int(batch_size))
        self.written = 0
        self._pending = []
        try:
            os.makedirs(self.path, exist_ok=True)
            self._env = lmdb.open(self.path, map_size=int(map_size), subdir=True,
                                  meminit=False, map_async=True)
        except (OSError, lmdb.Error) as err:
            raise LmdbError("%s: cannot create an LMDB database here: %s" % (self.path, err)) from None

    @property
    def map_size(self):
        return self._env.info()["map_size"]

    def put(self, key, value):
        self._pending.append((_key_bytes(key), bytes(value)))
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self):
        """Commit pending records; on a full map, double the map size and retry the batch."""
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
            except lmdb.MapFullError:
                # The aborted transaction left nothing behind, so the whole batch is redone.
                self._env.set_mapsize(self.map_size * 2)
                continue
            self.written += len(self._pending)
            self._pending = []

    def close(self):
        if self._env is not None:
            try:
                self.flush()
            finally:
                self._env.close()
                self._env = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # keep what was committed, drop the half batch, and let the error through
            self._pending = []
            self.close()
        return False


class LmdbReader:
    """Read-only access to an LMDB database (a directory with data.mdb, or the file itself)."""

    def __init__(self, path):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise LmdbError("%s: no such LMDB database (path does not exist)" % self.path)
        subdir = os.path.isdir(self.path)
        if subdir and not os.path.isfile(os.path.join(self.path, "data.mdb")):
            raise LmdbError("%s: not an LMDB database (the folder has no data.mdb)" % self.path)
        try:
            self._env = lmdb.open(self.path, readonly=True, lock=False, subdir=subdir,
                                  readahead=False, max_readers=512)
        except lmdb.Error as err:
            reason = str(err).replace(self.path + ": ", "")
            raise LmdbError("%s: not an LMDB database (%s)" % (self.path, reason)) from None

    def __len__(self):
        return self._env.stat()["entries"]

    def get(self, key, default=_MISSING):
        """The value stored under ``key``; ``KeyError`` (or ``default``) when absent."""
        with self._env.begin() as txn:
            value = txn.get(_key_bytes(key))
        if value is None:
            if default is _MISSING:
                raise KeyError('key "%s" is not in LMDB database %s' % (key, self.path))
            return default
        return value

    def __contains__(self, key):
        return self.get(key, None) is not None

    def keys(self):
        """All keys, in key order."""
        with self._env.begin() as txn:
            return [_key_str(k) for k in txn.cursor().iternext(keys=True, values=False)]

    def items(self):
        """Iterate ``(key, value bytes)`` in key order."""
        with self._env.begin() as txn:
            for key, value in txn.cursor():
                yield _key_str(key), bytes(value)

    def __iter__(self):
        return self.items()

    def first(self):
        """The first ``(key, value)`` in key order, or ``None`` for an empty database."""
        return next(iter(self.items()), None)

    def arrays(self):
        """Iterate ``(key, C x H x W array, label)`` of a Datum database in key order."""
        for key, value in self.items():
            array, label = bytes_to_array(value, '%s key "%s"' % (self.path, key))
            yield key, array, label

    def first_shape(self):
        """C x H x W shape of the first Datum (``None`` when the database is empty)."""
        item = self.first()
        if item is None:
            return None
        array, _ = bytes_to_array(item[1], '%s key "%s"' % (self.path, item[0]))
        return tuple(array.shape)

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
