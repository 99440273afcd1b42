"""Loaded deploy nets kept between inference requests.

Loading a model costs more than using it: for FCN-AlexNet at 256² gray on the 2-core box, building
``jobs.infer.DeployModel`` (the net's layers, then 227 MB of weights read from the snapshot) took
0.59 s against a 0.23 s forward pass (bench/RESULTS.md, issue 20). ``JobService`` keeps the nets it
last used in one ``DeployNetCache``:

* an entry is found by (job folder, snapshot file, backend, device) and stays valid while every
  file it was built from keeps its size, modification time and inode (deploy.prototxt,
  train_val.prototxt with the preprocessing, the snapshot, the mean file): a snapshot rewritten
  under the same name (a resumed training) is loaded again;
* bounded: at most ``max_nets`` nets and ``max_bytes`` of weights (the snapshot files' sizes,
  about what the parameters take in memory); the least recently used go first, except the one
  just asked for, which stays even when it alone is larger;
* thread-safe: a net asked for by several requests at once is built once (the others wait for it),
  a failed build is not kept, and ``DeployModel.predict`` holds the model's own lock (a net's blobs
  are shared state), so requests on one net take turns and requests on different nets do not wait
  for each other;
* ``forget(job_dir)`` drops a deleted job's nets.
"""
import collections
import os
import threading

from caffeseg.jobs import infer as inf

# FCN-AlexNet's weights are 227 MB and FCN-8s' 537 MB: a few of the lab's nets fit, and the
# compare view's models (up to 6) are not all kept when they are large.
DEFAULT_MAX_NETS = 4
DEFAULT_MAX_BYTES = 1 << 30


def file_stamp(path):
    """(size, mtime in ns, inode) of ``path``, None when it is missing. The inode tells a file
    replaced by a rename (an atomic write) even within the clock tick that mtime resolves."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


class _Entry(object):
    def __init__(self, files, stamps, size):
        self.files = files  # the paths the model was built from
        self.stamps = stamps  # their file_stamp() when it was built
        self.size = size  # bytes it counts against max_bytes
        self.model = None  # set once built
        self.build_lock = threading.Lock()  # held while it is built


def caffe_identity(caffe):
    """What distinguishes nets of the same files built by ``caffe``: the backend and, for the
    engine, the device a net built now lands on (``caffe.set_mode_gpu()`` / ``set_device``)."""
    if getattr(caffe, "__caffeseg_engine__", False):
        from caffeseg.engine import device
        return "engine", str(device.current_device())
    return getattr(caffe, "__name__", type(caffe).__name__), getattr(caffe, "__file__", None)


class DeployNetCache(object):
    def __init__(self, max_nets=DEFAULT_MAX_NETS, max_bytes=DEFAULT_MAX_BYTES):
        if int(max_nets) < 1 or int(max_bytes) < 1:
            raise ValueError("a net cache holds at least one net and one byte")
        self.max_nets, self.max_bytes = int(max_nets), int(max_bytes)
        self._lock = threading.Lock()  # guards _entries and the counters
        self._entries = collections.OrderedDict()  # key -> _Entry, least recently used first
        self.builds = 0  # nets built (misses), for tests and the bench

    def deploy_model(self, job_dir, snapshot=None, backend="auto", caffe=None):
        """The job's ``DeployModel`` for snapshot iteration ``snapshot`` (None: the newest), loaded
        once and shared; InferError as ``DeployModel.from_job`` raises it."""
        weights = inf.latest_snapshot(job_dir, snapshot)
        caffe = caffe or inf.get_caffe(backend)
        job_dir = os.path.realpath(job_dir)
        key = (job_dir, os.path.realpath(weights)) + tuple(caffe_identity(caffe))
        files = [os.path.join(job_dir, "deploy.prototxt"), os.path.join(job_dir, "train_val.prototxt"), weights]
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.model is not None and \
                    [file_stamp(f) for f in entry.files] != entry.stamps:
                del self._entries[key]  # a file changed since it was built: load it again
                entry = None
            if entry is None:
                entry = _Entry(files, [file_stamp(f) for f in files], (file_stamp(weights) or (0,))[0])
                self._entries[key] = entry
            self._entries.move_to_end(key)
        with entry.build_lock:
            if entry.model is None:
                try:
                    model = inf.DeployModel.from_job(job_dir, caffe=caffe, weights=weights)
                except BaseException:
                    with self._lock:
                        if self._entries.get(key) is entry:
                            del self._entries[key]
                    raise
                mean_file = model.preprocess_spec.get("mean_file")
                if mean_file:
                    mean_path = os.path.abspath(mean_file)  # the file DeployModel read
                    entry.files = entry.files + [mean_path]
                    entry.stamps = entry.stamps + [file_stamp(mean_path)]
                entry.model = model
                with self._lock:
                    self.builds += 1
                    self._evict(keep=key)
        return entry.model

    def _evict(self, keep):
        """Drop the least recently used built nets beyond the bounds (``_lock`` held)."""
        def over():
            built = [e for e in self._entries.values() if e.model is not None]
            return len(built) > self.max_nets or sum(e.size for e in built) > self.max_bytes
        while over():
            victim = next((k for k, e in self._entries.items() if e.model is not None and k != keep), None)
            if victim is None:
                return
            del self._entries[victim]  # a request still predicting with it keeps its own reference

    def forget(self, job_dir):
        """Drop every net of ``job_dir`` (the job is deleted)."""
        job_dir = os.path.realpath(job_dir)
        with self._lock:
            for key in [k for k in self._entries if k[0] == job_dir]:
                del self._entries[key]

    def __len__(self):
        with self._lock:
            return sum(1 for e in self._entries.values() if e.model is not None)
