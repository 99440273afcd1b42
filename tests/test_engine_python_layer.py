"""Python layers: the pycaffe contract, Caffe's golden ScaleShift case, errors users can act on."""
import os
import sys
import textwrap

import numpy as np
import pytest
import torch

from caffeseg.engine.layer_types.python import LayerBlob, PythonLayer, PythonLayerError
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.prototxt import parse_net, read_net

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "layers", "python_layer")


def _layer(param, search_dirs, phase=caffe_pb2.TRAIN):
    layer = PythonLayer(param, phase)
    layer.search_dirs = list(search_dirs)
    return layer


@pytest.fixture(autouse=True)
def _forget_test_modules():
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("golden_pylayer", "user_layer_")):
            del sys.modules[name]


def test_golden_scale_shift_forward_and_backward_match_caffe():
    net = read_net(os.path.join(GOLDEN, "net.prototxt"))
    io = np.load(os.path.join(GOLDEN, "io.npz"))
    param = [l for l in net.layer if l.type == "Python"][0]
    layer = _layer(param, [GOLDEN])
    x = torch.from_numpy(io["input:x"].copy())
    assert layer.setup([tuple(x.shape)]) == []
    assert layer.reshape([tuple(x.shape)]) == [tuple(io["blob:y"].shape)]
    (y,) = layer.forward([x], [])
    np.testing.assert_allclose(y.numpy(), io["blob:y"], rtol=1e-6, atol=1e-6)
    top_diff = torch.from_numpy(io["topdiff:y"].copy())
    (dx,), _ = layer.backward([x], [], [y], [top_diff], [True], [])
    np.testing.assert_allclose(dx.numpy(), io["diff:x"], rtol=1e-6, atol=1e-6)
    # `import caffe` inside the module resolved to the engine
    assert sys.modules["caffe"].Layer is not None


def _write_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return tmp_path


def _param(module, layer, param_str="", top=("y",), bottom=("x",)):
    text = 'layer { name: "py" type: "Python" '
    text += "".join(f'bottom: "{b}" ' for b in bottom) + "".join(f'top: "{t}" ' for t in top)
    text += f'python_param {{ module: "{module}" layer: "{layer}" param_str: "{param_str}" }} }}'
    return parse_net(text).layer[0]


def test_raising_layer_names_user_file_line_and_message(tmp_path):
    _write_module(tmp_path, "user_layer_raise", """
        import caffe

        class Boom(caffe.Layer):
            def setup(self, bottom, top):
                pass

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                raise RuntimeError("labels out of range")
        """)
    layer = _layer(_param("user_layer_raise", "Boom"), [tmp_path])
    layer.setup([(1, 2)])
    # Caffe lets the user's exception through as itself; the engine adds where it happened
    with pytest.raises(RuntimeError) as info:
        layer.forward([torch.zeros(1, 2)], [])
    assert type(info.value) is RuntimeError
    message = str(info.value)
    assert "layer 'py'" in message and "forward" in message and "labels out of range" in message
    assert "user_layer_raise.py, line 12" in message


def test_missing_module_names_module_and_search_path(tmp_path):
    layer = _layer(_param("user_layer_nowhere", "X"), [tmp_path])
    with pytest.raises(PythonLayerError, match=r"'user_layer_nowhere' was not found; searched .*" + str(tmp_path)):
        layer.setup([(1,)])


def test_missing_class_is_named(tmp_path):
    _write_module(tmp_path, "user_layer_noclass", "import caffe\n")
    with pytest.raises(PythonLayerError, match="has no class 'Nope'"):
        _layer(_param("user_layer_noclass", "Nope"), [tmp_path]).setup([(1,)])


def test_param_str_phase_blobs_and_reshape_before_every_forward(tmp_path):
    _write_module(tmp_path, "user_layer_params", """
        import caffe
        import numpy as np

        class Affine(caffe.Layer):
            def setup(self, bottom, top):
                self.seen = (self.param_str, self.phase)
                self.blobs.add_blob(bottom[0].channels)
                self.blobs[0].data[...] = 2.0
                self.reshapes = 0

            def reshape(self, bottom, top):
                self.reshapes += 1
                top[0].reshape(*bottom[0].shape)

            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data * self.blobs[0].data[None, :]

            def backward(self, top, propagate_down, bottom):
                self.blobs[0].diff[...] = (top[0].diff * bottom[0].data).sum(0)
                if propagate_down[0]:
                    bottom[0].diff[...] = top[0].diff * self.blobs[0].data[None, :]
        """)
    layer = _layer(_param("user_layer_params", "Affine", "hello"), [tmp_path], caffe_pb2.TEST)
    (w,) = layer.setup([(2, 3)])
    assert layer.user.seen == ("hello", caffe_pb2.TEST)
    np.testing.assert_array_equal(w.numpy(), [2, 2, 2])
    layer.reshape([(2, 3)])
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    params = [torch.tensor([1.0, 2.0, 3.0])]
    (y,) = layer.forward([x], params)
    np.testing.assert_array_equal(y.numpy(), x.numpy() * [1, 2, 3])
    assert layer.user.reshapes == 2
    (dx,), (dw,) = layer.backward([x], params, [y], [torch.ones(2, 3)], [True], [True])
    np.testing.assert_array_equal(dw.numpy(), x.numpy().sum(0))
    np.testing.assert_array_equal(dx.numpy(), np.ones((2, 3)) * [1, 2, 3])


def test_layer_blob_legacy_accessors():
    blob = LayerBlob(np.zeros((2, 3), np.float32))
    assert (blob.num, blob.channels, blob.height, blob.width, blob.count) == (2, 3, 1, 1, 6)
    blob.reshape(1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="at most 4 axes"):
        blob.num
    with pytest.raises(AttributeError):
        blob.data = np.zeros(3)


def test_golden_python_layer_through_the_engine_net(monkeypatch):
    from caffeseg.engine.net import Net
    monkeypatch.chdir(GOLDEN)  # the module sits beside the prototxt; the cwd is searched
    io = np.load("io.npz")
    net = Net("net.prototxt", caffe_pb2.TRAIN)
    net.blobs["x"].data[...] = io["input:x"]
    net.forward()
    np.testing.assert_allclose(net.blobs["y"].data, io["blob:y"], rtol=1e-6, atol=1e-6)
    net.blobs["y"].diff[...] = io["topdiff:y"]
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, io["diff:x"], rtol=1e-6, atol=1e-6)


def test_python_loss_layer_weighs_zero_unless_loss_weight_is_given(tmp_path, monkeypatch):
    from caffeseg.engine.net import Net
    _write_module(tmp_path, "user_layer_loss", """
        import caffe

        class SumLoss(caffe.Layer):
            def setup(self, bottom, top):
                pass

            def reshape(self, bottom, top):
                top[0].reshape(1)

            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data.sum()

            def backward(self, top, propagate_down, bottom):
                bottom[0].diff[...] = top[0].diff[0]
        """)
    monkeypatch.chdir(tmp_path)
    base = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "myloss" type: "Python" bottom: "x" top: "l" %s '
            'python_param { module: "user_layer_loss" layer: "SumLoss" } }\n')
    for extra, weight in (("", 0.0), ("loss_weight: 2", 2.0)):
        (tmp_path / "net.prototxt").write_text("force_backward: true\n" + base % extra)
        net = Net("net.prototxt", caffe_pb2.TRAIN)
        net.blobs["x"].data[...] = 1.0
        net.forward()
        assert net.last_loss == pytest.approx(6.0 * weight)
        net.backward()
        np.testing.assert_array_equal(net.blobs["x"].diff, np.full((2, 3), weight))


def test_python_layer_blobs_become_learnable_net_params(tmp_path, monkeypatch):
    from caffeseg.engine.net import Net
    _write_module(tmp_path, "user_layer_scale", """
        import caffe

        class Scale(caffe.Layer):
            def setup(self, bottom, top):
                self.blobs.add_blob(1)
                self.blobs[0].data[...] = 3.0

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].shape)

            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data * self.blobs[0].data[0]

            def backward(self, top, propagate_down, bottom):
                self.blobs[0].diff[...] = (top[0].diff * bottom[0].data).sum()
                if propagate_down[0]:
                    bottom[0].diff[...] = top[0].diff * self.blobs[0].data[0]
        """)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'force_backward: true\n'
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }\n'
        'layer { name: "py" type: "Python" bottom: "x" top: "y" param { lr_mult: 2 } '
        'python_param { module: "user_layer_scale" layer: "Scale" } }\n')
    net = Net("net.prototxt", caffe_pb2.TRAIN)
    assert [p.data.tolist() for p in net.params["py"]] == [[3.0]]
    assert [(m, d) for _, m, d in net.learnable_params] == [(2.0, 1.0)]
    net.params["py"][0].data[...] = 5.0  # e.g. copy_from or a solver update
    net.blobs["x"].data[...] = [[1, 2], [3, 4]]
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, [[5, 10], [15, 20]])
    net.blobs["y"].diff[...] = 1.0
    net.backward()
    np.testing.assert_array_equal(net.params["py"][0].diff, [10.0])
    np.testing.assert_array_equal(net.blobs["x"].diff, np.full((2, 2), 5.0))


def test_python_data_layer_without_bottoms_and_changing_shapes(tmp_path, monkeypatch):
    """FCN's voc_layers style: no bottoms, the next image is loaded in reshape, sizes vary."""
    from caffeseg.engine.net import Net
    _write_module(tmp_path, "user_layer_source", """
        import numpy as np
        import caffe

        class Images(caffe.Layer):
            def setup(self, bottom, top):
                self.index = 0

            def reshape(self, bottom, top):
                self.index += 1
                self.image = np.full((1, 1, self.index, self.index + 1), float(self.index), np.float32)
                top[0].reshape(*self.image.shape)

            def forward(self, bottom, top):
                top[0].data[...] = self.image
        """)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "images" type: "Python" top: "data" python_param { module: "user_layer_source" layer: "Images" } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }\n')
    net = Net("net.prototxt", caffe_pb2.TEST)
    assert net.blobs["data"].shape == (1, 1, 1, 2)  # Caffe reshapes once at setup
    for expected in (2, 3):  # ... and again before every forward
        net.forward()
        assert net.blobs["out"].shape == (1, 1, expected, expected + 1)
        assert float(net.blobs["out"].data.max()) == expected


# -- construction as Caffe's GetPythonLayer: LayerClass(layer_param), caffe.Layer only ---------
# (checked on real pycaffe 9b891540: a class without the parameter argument fails with the
# TypeError of the call; a class not derived from caffe.Layer, and a subclass whose __init__
# skips caffe.Layer.__init__, fail Boost.Python's conversion to a C++ layer)
def test_the_class_is_constructed_with_the_layer_parameter(tmp_path):
    _write_module(tmp_path, "user_layer_keeps", """
        import caffe

        class Keeps(caffe.Layer):
            def __init__(self, layer_param):
                super().__init__(layer_param)
                self.given = layer_param

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].shape)
        """)
    layer = _layer(_param("user_layer_keeps", "Keeps", "abc"), [tmp_path])
    layer.setup([(1, 2)])
    assert layer.user.given.name == "py" and layer.user.given.python_param.layer == "Keeps"
    assert layer.user.param_str == "abc"


def test_an_error_in_the_users_init_keeps_its_type_and_names_layer_file_and_line(tmp_path):
    _write_module(tmp_path, "user_layer_picky", """
        import caffe

        class Picky(caffe.Layer):
            def __init__(self, layer_param):
                super().__init__(layer_param)
                raise TypeError("param_str must name a class")
        """)
    with pytest.raises(TypeError) as info:
        _layer(_param("user_layer_picky", "Picky"), [tmp_path]).setup([(1, 2)])
    message = str(info.value)
    assert type(info.value) is TypeError
    assert "layer 'py'" in message and "Picky(layer_param)" in message
    assert "param_str must name a class" in message and "user_layer_picky.py, line 7" in message


def test_a_class_whose_init_takes_no_layer_parameter_fails_as_in_caffe(tmp_path):
    _write_module(tmp_path, "user_layer_noparam", """
        import caffe

        class NoParam(caffe.Layer):
            def __init__(self):
                super().__init__()
        """)
    with pytest.raises(TypeError, match=r"layer 'py'.*NoParam\(layer_param\).*takes 1 positional argument but 2"):
        _layer(_param("user_layer_noparam", "NoParam"), [tmp_path]).setup([(1, 2)])


@pytest.mark.parametrize("body, described", [
    ("class Duck:\n    def setup(self, bottom, top):\n        pass\n", "a class deriving from object only"),
    ("def Duck(layer_param):\n    return None\n", "a function"),
], ids=["plain-class", "function"])
def test_a_python_param_layer_that_is_not_a_caffe_layer_class_is_refused(tmp_path, body, described):
    _write_module(tmp_path, "user_layer_duck", body)
    with pytest.raises(PythonLayerError, match=rf"'Duck' of module 'user_layer_duck' .* is {described}, "
                                               r"not a class derived from caffe.Layer"):
        _layer(_param("user_layer_duck", "Duck"), [tmp_path]).setup([(1, 2)])


def test_a_subclass_that_skips_caffe_layer_init_is_refused(tmp_path):
    _write_module(tmp_path, "user_layer_lazy", """
        import caffe

        class Lazy(caffe.Layer):
            def __init__(self, layer_param):
                self.ready = True
        """)
    with pytest.raises(PythonLayerError, match=r"'Lazy' .* did not run caffe.Layer.__init__; .*super\(\).__init__"):
        _layer(_param("user_layer_lazy", "Lazy"), [tmp_path]).setup([(1, 2)])


# -- modules from the net's own folders: one module per file, not per name ----------------------
SCALING_MODULE = """
    import caffe

    FACTOR = {factor}

    class Scaling(caffe.Layer):
        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = FACTOR * bottom[0].data
    """


def _job_net(folder, module="user_layer_scaling", factor=2):
    """A job-like folder: net.prototxt with a Python layer and the module ``module`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    if factor is not None:
        _write_module(folder, module, SCALING_MODULE.format(factor=factor))
    (folder / "net.prototxt").write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
        f'layer {{ name: "py" type: "Python" bottom: "x" top: "y" python_param {{ module: "{module}" '
        'layer: "Scaling" } }\n')
    return str(folder / "net.prototxt")


def _run(prototxt):
    from caffeseg.engine.net import Net
    net = Net(prototxt, caffe_pb2.TEST)
    net.blobs["x"].data[...] = [[1.0, 2.0]]
    net.forward()
    return net, net.blobs["y"].data.tolist()


def test_two_jobs_modules_of_the_same_name_each_run_their_own_code(tmp_path, monkeypatch):
    # the web server evaluates many jobs in one process: job B must not get job A's class
    monkeypatch.chdir(tmp_path)
    job_a = _job_net(tmp_path / "jobs" / "a", factor=2)
    job_b = _job_net(tmp_path / "jobs" / "b", factor=3)
    net_a, out_a = _run(job_a)
    net_b, out_b = _run(job_b)
    assert out_a == [[2.0, 4.0]] and out_b == [[3.0, 6.0]]
    assert _run(job_a)[1] == [[2.0, 4.0]]
    class_a, class_b = (type(n.layers[1].impl.user) for n in (net_a, net_b))
    assert class_a is not class_b and class_a.__module__ != class_b.__module__
    assert "user_layer_scaling" not in sys.modules  # nothing answers the plain name for a later job
    assert sys.modules[class_a.__module__].__file__ == os.path.join(os.path.dirname(job_a), "user_layer_scaling.py")


def test_a_job_module_pickles_and_inspect_finds_its_source(tmp_path):
    import inspect
    import pickle
    net, _ = _run(_job_net(tmp_path / "job", factor=4))
    cls = type(net.layers[1].impl.user)
    assert pickle.loads(pickle.dumps(cls)) is cls  # pickle finds the class through sys.modules
    assert "class Scaling(caffe.Layer)" in inspect.getsource(cls)


def test_a_job_module_is_executed_again_when_its_file_changes(tmp_path):
    prototxt = _job_net(tmp_path / "job", factor=2)
    assert _run(prototxt)[1] == [[2.0, 4.0]]
    _write_module(tmp_path / "job", "user_layer_scaling", SCALING_MODULE.format(factor=10))
    assert _run(prototxt)[1] == [[10.0, 20.0]]


def test_a_module_found_on_sys_path_keeps_pycaffes_import_by_name(tmp_path, monkeypatch):
    # pycaffe's way: the module is whatever `import NAME` gives, state set by the caller included
    site = tmp_path / "site"
    site.mkdir()
    _write_module(site, "user_layer_onpath", SCALING_MODULE.format(factor=2))
    monkeypatch.syspath_prepend(str(site))
    import user_layer_onpath
    user_layer_onpath.FACTOR = 7
    net, out = _run(_job_net(tmp_path / "job", module="user_layer_onpath", factor=None))
    assert out == [[7.0, 14.0]]
    assert type(net.layers[1].impl.user).__module__ == "user_layer_onpath"


def test_a_job_module_the_caller_imported_from_that_file_is_shared(tmp_path, monkeypatch):
    # a script beside its prototxt that imported the layer module itself sees the same module
    prototxt = _job_net(tmp_path / "job", factor=2)
    monkeypatch.syspath_prepend(str(tmp_path / "job"))
    import user_layer_scaling
    user_layer_scaling.FACTOR = 5
    net, out = _run(prototxt)
    assert out == [[5.0, 10.0]] and type(net.layers[1].impl.user).__module__ == "user_layer_scaling"


def test_a_module_name_that_is_a_path_is_refused(tmp_path):
    with pytest.raises(PythonLayerError, match=r"'\.\./evil' is not a module name"):
        _layer(_param("../evil", "X"), [tmp_path]).setup([(1,)])
