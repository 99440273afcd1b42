"""The metric layers' channel argmax must equal numpy's argmax, ties included."""
import numpy as np
import pytest

from test_digits_python_layers import dpl


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
def test_channel_argmax_equals_numpy_with_ties(classes):
    rng = np.random.RandomState(classes)
    # Few distinct values, so most pixels have ties between channels.
    scores = rng.randint(0, 3, size=(3, classes, 17, 9)).astype(np.float32)
    expected = np.argmax(scores, axis=1)
    np.testing.assert_array_equal(dpl.channel_argmax(scores), expected)
    for k in range(classes):
        np.testing.assert_array_equal(dpl.predicted_as(scores, k), expected == k)


def test_channel_argmax_on_a_non_contiguous_view():
    rng = np.random.RandomState(7)
    scores = rng.randn(2, 4, 8, 16).astype(np.float32)[:, :, :, ::2]
    np.testing.assert_array_equal(dpl.channel_argmax(scores), np.argmax(scores, axis=1))
    np.testing.assert_array_equal(dpl.predicted_as(scores, 2), np.argmax(scores, axis=1) == 2)
