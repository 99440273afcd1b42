"""docker/build_caffe.sh's source check (`--check-source`: fetch, unpack, compare with the
commit's git tree id, no build): the pristine tarball passes, another archive of the same tree
(GitHub's layout: another top folder, other bytes) passes, a changed file fails. Needs the
tarball of ../shared/third_party (CI and these machines have it)."""
import os
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "docker", "build_caffe.sh")
TARBALL = os.path.join(os.path.dirname(ROOT), "shared", "third_party", "bvlc-caffe-9b891540.tar.gz")
COMMIT = "9b891540183ddc834a02b2bd81b31afae71b2153"


@pytest.fixture(scope="module")
def pristine():
    if not os.path.isfile(TARBALL):
        pytest.skip("no %s (the pristine BVLC source of ../shared/third_party)" % TARBALL)
    return TARBALL


def check(tarball, tmp_path):
    env = dict(os.environ, CAFFE_TARBALL=str(tarball), TMPDIR=str(tmp_path))
    return subprocess.run([SCRIPT, "--check-source"], capture_output=True, text=True, env=env, timeout=300)


def repack(pristine, tmp_path, name, change=None):
    """The pristine files under GitHub's top folder name, recompressed; ``change`` edits one file."""
    unpacked = tmp_path / "unpacked"
    with tarfile.open(pristine) as tar:
        tar.extractall(str(unpacked))
    top = unpacked / "caffe-9b891540"
    if change:
        with open(str(top / change), "a") as f:
            f.write("// changed\n")
    out = tmp_path / name
    with tarfile.open(str(out), "w:gz", compresslevel=1) as tar:
        tar.add(str(top), arcname="caffe-" + COMMIT)
    return out


@pytest.mark.timeout(300)
def test_the_pristine_tarball_passes(pristine, tmp_path):
    result = check(pristine, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the pristine git-archive tarball" in result.stderr
    assert "source tree verified: git tree 8eaae6eadc67ef9bdc918e141e7773139cb5fabd" in result.stderr


@pytest.mark.timeout(300)
def test_another_archive_of_the_same_tree_passes(pristine, tmp_path):
    result = check(repack(pristine, tmp_path, "github-like.tar.gz"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sha256 differs" in result.stderr and "source tree verified" in result.stderr


@pytest.mark.timeout(300)
def test_a_changed_file_fails_the_tree_check(pristine, tmp_path):
    result = check(repack(pristine, tmp_path, "changed.tar.gz", change="src/caffe/net.cpp"), tmp_path)
    assert result.returncode != 0
    assert "not commit %s's tree 8eaae6eadc67ef9bdc918e141e7773139cb5fabd" % COMMIT in result.stderr
