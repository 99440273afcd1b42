"""jobs.net_cache: loaded deploy nets kept between inference requests, on the real engine.

A second request does not build the net again, a rewritten snapshot is loaded again, requests
sharing one net from several threads get what they get one at a time, the bound evicts the least
recently used, and a deleted job's nets are dropped. Results are those of a net built afresh."""
import json
import os
import threading
import time

import numpy as np
import pytest

from caffeseg.engine.datum import array_to_datum
from caffeseg.engine.lmdb_io import LmdbWriter
from caffeseg.engine.prototxt import format_message, parse_net
from caffeseg.jobs import infer as inf
from caffeseg.jobs.derive import DatasetFacts, derive_networks
from caffeseg.jobs.net_cache import DeployNetCache
from tests.jobs_fixtures import make_dataset_dir

# A Python layer that sleeps in its forward pass (releasing the GIL): two predictions on one net
# overlap inside it unless something makes them take turns.
SLOW_LAYER = '''
import time
import caffe


class Slow(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        time.sleep(0.02)
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass
'''


def net_text(slow=False):
    slow_layer = ('layer { name: "slow" type: "Python" bottom: "conv1" top: "slowed" '
                  'python_param { module: "slow_layer" layer: "Slow" } }\n') if slow else ""
    return (
        'name: "cache_net"\n'
        'layer { name: "train_data" type: "Data" top: "data" include { stage: "train" } data_param { batch_size: 1 } }\n'
        'layer { name: "train_label" type: "Data" top: "label" include { stage: "train" } data_param { batch_size: 1 } }\n'
        'layer { name: "val_data" type: "Data" top: "data" include { stage: "val" } '
        'transform_param { scale: 0.00392156862 } data_param { batch_size: 1 } }\n'
        'layer { name: "val_label" type: "Data" top: "label" include { stage: "val" } data_param { batch_size: 1 } }\n'
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 '
        'kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }\n'
        + slow_layer +
        'layer { name: "score" type: "Convolution" bottom: "%s" top: "score" convolution_param { num_output: 2 '
        'kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }\n' % ("slowed" if slow else "conv1") +
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" '
        'exclude { stage: "deploy" } }\n')


def images(count=6, seed=0):
    """Gray uint8 images of three sizes (a fully convolutional net takes each; a prediction
    reshapes the shared input blob to its size)."""
    rs = np.random.RandomState(seed)
    return [rs.randint(0, 256, (1, size, size)).astype(np.uint8) for size in [8, 12, 16] * (count // 3)]


@pytest.fixture
def dataset(tmp_path):
    folder = make_dataset_dir(str(tmp_path / "ds"), train=2, val=2)
    for stage in ("train", "val"):
        for part, arrays in (("features", [images(3, seed=s)[0] for s in (1, 2)]),
                             ("labels", [np.zeros((1, 8, 8), np.uint8)] * 2)):
            with LmdbWriter(os.path.join(folder, "%s_db" % stage, part)) as w:
                for i, a in enumerate(arrays):
                    w.put("%08d" % i, array_to_datum(a).SerializeToString())
    return folder


def write_weights(job_dir, iteration=1, seed=0):
    """snapshot_iter_<iteration>.caffemodel with weights drawn from ``seed``."""
    from caffeseg import engine
    engine.set_random_seed(seed)
    net = engine.Net(os.path.join(job_dir, "deploy.prototxt"), engine.TEST)
    path = os.path.join(job_dir, "snapshot_iter_%d.caffemodel" % iteration)
    net.save(path)
    return path


def make_job(folder, dataset, slow=False, seed=0):
    """A model job folder as jobs.model_job writes it (train_val, deploy, job.json) with a snapshot."""
    os.makedirs(folder)
    train_val, deploy = derive_networks(parse_net(net_text(slow)), DatasetFacts.load(dataset), {})
    with open(os.path.join(folder, "train_val.prototxt"), "w") as f:
        f.write(format_message(train_val))
    with open(os.path.join(folder, "deploy.prototxt"), "w") as f:
        f.write(format_message(deploy))
    with open(os.path.join(folder, "job.json"), "w") as f:
        json.dump({"classes": ["background", "lv"]}, f)
    if slow:
        with open(os.path.join(folder, "slow_layer.py"), "w") as f:
            f.write(SLOW_LAYER)
    write_weights(folder, seed=seed)
    return folder


class CountingCaffe(object):
    """The engine as ``caffe``, counting the nets built (caffe.Net calls) and, with ``delay``,
    building slowly (a request arriving meanwhile must wait for that build, not start its own)."""

    def __init__(self, delay=0.0):
        self.engine = inf.get_caffe("engine")
        self.TEST = self.engine.TEST
        self.built, self.delay = 0, delay
        self._lock = threading.Lock()

    def Net(self, *args):
        with self._lock:
            self.built += 1
        time.sleep(self.delay)
        return self.engine.Net(*args)


def fresh_prediction(job_dir, image):
    """What a net built for this one request predicts (inference before the cache)."""
    return inf.DeployModel.from_job(job_dir, backend="engine").predict(image)


def same_prediction(a, b):
    return np.array_equal(a["probabilities"], b["probabilities"]) and np.array_equal(a["class_map"], b["class_map"])


def test_a_second_request_uses_the_net_already_loaded(tmp_path, dataset):
    job = make_job(str(tmp_path / "job"), dataset)
    caffe = CountingCaffe()
    cache = DeployNetCache()
    image = images()[0]
    first = cache.deploy_model(job, caffe=caffe)
    again = cache.deploy_model(job, caffe=caffe)
    by_iteration = cache.deploy_model(job, snapshot=1, caffe=caffe)  # the same file, named by its iteration
    assert first is again is by_iteration
    assert caffe.built == 1 and cache.builds == 1
    assert same_prediction(again.predict(image), fresh_prediction(job, image))


def test_a_rewritten_snapshot_is_loaded_again(tmp_path, dataset):
    job = make_job(str(tmp_path / "job"), dataset)
    caffe = CountingCaffe()
    cache = DeployNetCache()
    image = images()[1]
    before = cache.deploy_model(job, caffe=caffe).predict(image)
    path = write_weights(job, seed=7)  # a resumed training writes the same iteration again
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # beyond the clock tick
    after = cache.deploy_model(job, caffe=caffe).predict(image)
    assert caffe.built == 2
    assert not np.array_equal(before["probabilities"], after["probabilities"])
    assert same_prediction(after, fresh_prediction(job, image))
    write_weights(job, iteration=2, seed=8)  # a newer snapshot is the newest model now
    newest = cache.deploy_model(job, caffe=caffe)
    assert newest.weights.endswith("snapshot_iter_2.caffemodel") and caffe.built == 3


def test_requests_sharing_one_net_get_what_they_get_one_at_a_time(tmp_path, dataset):
    """Eight threads predict images of three sizes on one cached net (its Python layer sleeps
    mid-forward, so unserialised predictions would overwrite each other's blobs)."""
    job = make_job(str(tmp_path / "job"), dataset, slow=True)
    cache = DeployNetCache()
    inputs = images(6)
    model = cache.deploy_model(job, backend="engine")
    serial = [model.predict(image) for image in inputs]
    results, failures = {}, []
    start = threading.Barrier(8)

    def client(n):
        try:
            start.wait()
            for i in range(len(inputs)):
                k = (i + n) % len(inputs)
                results[(n, k)] = cache.deploy_model(job, backend="engine").predict(inputs[k])
        except Exception as exc:  # noqa: BLE001 - reported below with the thread
            failures.append((n, repr(exc)))
    workers = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures
    assert len(results) == 8 * len(inputs) and cache.builds == 1
    assert all(same_prediction(r, serial[k]) for (_, k), r in results.items())


def test_requests_arriving_while_a_net_loads_wait_for_that_one_load(tmp_path, dataset):
    job = make_job(str(tmp_path / "job"), dataset)
    caffe = CountingCaffe(delay=0.3)
    cache = DeployNetCache()
    models = []
    workers = [threading.Thread(target=lambda: models.append(cache.deploy_model(job, caffe=caffe))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert caffe.built == 1 and len(models) == 4 and all(m is models[0] for m in models)


def test_the_bound_evicts_the_least_recently_used(tmp_path, dataset):
    jobs = [make_job(str(tmp_path / ("job%d" % i)), dataset, seed=i) for i in range(3)]
    caffe = CountingCaffe()
    cache = DeployNetCache(max_nets=2)
    a = cache.deploy_model(jobs[0], caffe=caffe)
    cache.deploy_model(jobs[1], caffe=caffe)
    assert cache.deploy_model(jobs[0], caffe=caffe) is a  # job0 is now the most recently used
    cache.deploy_model(jobs[2], caffe=caffe)  # evicts job1
    assert len(cache) == 2 and caffe.built == 3
    assert cache.deploy_model(jobs[0], caffe=caffe) is a and caffe.built == 3
    cache.deploy_model(jobs[1], caffe=caffe)
    assert caffe.built == 4 and len(cache) == 2

    size = os.path.getsize(os.path.join(jobs[0], "snapshot_iter_1.caffemodel"))
    small = DeployNetCache(max_bytes=size + 1)  # room for one net's weights
    small.deploy_model(jobs[0], caffe=caffe)
    last = small.deploy_model(jobs[1], caffe=caffe)
    assert len(small) == 1 and small.deploy_model(jobs[1], caffe=caffe) is last
    alone = DeployNetCache(max_bytes=1)  # the net just asked for stays, even alone above the bound
    assert alone.deploy_model(jobs[2], caffe=caffe) is alone.deploy_model(jobs[2], caffe=caffe) and len(alone) == 1
    with pytest.raises(ValueError):
        DeployNetCache(max_nets=0)


def test_a_failed_load_is_not_kept(tmp_path, dataset):
    job = make_job(str(tmp_path / "job"), dataset)
    path = os.path.join(job, "snapshot_iter_1.caffemodel")
    good = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(b"\x08not a caffemodel")
    cache = DeployNetCache()
    with pytest.raises(Exception):
        cache.deploy_model(job, backend="engine")
    assert len(cache) == 0
    with open(path, "wb") as f:
        f.write(good)
    image = images()[2]
    assert same_prediction(cache.deploy_model(job, backend="engine").predict(image), fresh_prediction(job, image))
    with pytest.raises(inf.InferError, match="no snapshot at iteration 5"):
        cache.deploy_model(job, snapshot=5, backend="engine")


def test_the_service_keeps_a_models_net_and_drops_it_with_the_job(tmp_path, dataset):
    from caffeseg.jobs.service import JobService
    svc = JobService(str(tmp_path / "jobs"), backend="engine")
    ds = svc.import_dataset(dataset, "d")
    [model] = svc.create_model({"dataset_id": ds["id"], "network_text": net_text(), "epochs": 1})
    write_weights(model["dir"])
    one = svc.infer_record(model["id"], "00000000")
    two = svc.infer_record(model["id"], "00000001")
    image, _ = inf.record_by_key(dataset, "00000001")
    assert svc.deploy_nets.builds == 1 and len(svc.deploy_nets) == 1
    assert same_prediction(two, fresh_prediction(model["dir"], image))
    assert one["snapshot"] == "snapshot_iter_1.caffemodel"
    svc.delete(model["id"])
    assert len(svc.deploy_nets) == 0
