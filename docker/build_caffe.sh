#!/usr/bin/env bash
# Build BVLC Caffe (CPU, pycaffe, Python layer) at one pinned commit into a cache outside the clone.
#
#   docker/build_caffe.sh            # what `make caffe` runs; prints the install prefix last
#   docker/build_caffe.sh --prefix   # only print where the build for this interpreter goes
#   docker/build_caffe.sh --check-source  # fetch, unpack and check the source only (no build)
#
# Environment (all optional):
#   CAFFESEG_CACHE         cache root (default ${XDG_CACHE_HOME:-~/.cache}/caffeseg)
#   CAFFE_PYTHON           interpreter pycaffe is built for (default /usr/bin/python3: Debian's
#                          Boost.Python and python3-numpy are built against it; another one needs
#                          its own headers, a shared libpython, numpy < 2 and a matching Boost.Python)
#   CAFFE_TARBALL          source tarball (default ../shared/third_party/bvlc-caffe-9b891540.tar.gz
#                          beside the clone, whose sha256 must match); when absent the GitHub
#                          archive of the commit is downloaded. Any archive must hold the commit's
#                          git tree (checked after unpacking).
#   CAFFE_JOBS             parallel compile jobs (default: nproc)
#   CAFFE_SKIP_APT=1       never call apt-get (the packages must already be installed)
#
# The result is reused when its stamp says it is complete for the same commit, recipe and
# interpreter; a build that stopped half-way has no stamp and is redone from scratch.
set -euo pipefail

CAFFE_COMMIT=9b891540183ddc834a02b2bd81b31afae71b2153
CAFFE_SHORT=${CAFFE_COMMIT:0:8}
# The git tree id of that commit (`git cat-file -p COMMIT`). The extracted source must reproduce it
# (`git write-tree` of the extracted files), whichever tarball it came from: the checked-in
# git-archive tarball and GitHub's archive compress differently, but hold the same tree.
CAFFE_TREE=8eaae6eadc67ef9bdc918e141e7773139cb5fabd
# sha256 of the git-archive tarball in ../shared/third_party (a faster first check for that file).
CAFFE_TARBALL_SHA256=108a9be9bb1bb8859b09c6b4418ef19282ff5471ad346bb7e9be5c7bd820e1c2
CAFFE_URL=https://github.com/BVLC/caffe/archive/${CAFFE_COMMIT}.tar.gz
# Bump when the fixes, the CMake flags or the files kept below change, so an older cached build
# is not taken as current. jobs/real_caffe.py CAFFE_BUILD_RECIPE is the same value (its locator
# takes only builds of this recipe; tests/test_real_caffe_locate.py checks they agree).
RECIPE=2
STAMP_NAME=.caffeseg-build-complete

# Debian packages: the compile needs the first group, pycaffe at run time the second
# (caffe.io imports skimage; caffe.draw, tested by pycaffe's suite, needs pydot and graphviz).
BUILD_PACKAGES="build-essential cmake pkg-config git libboost-system-dev libboost-thread-dev
  libboost-filesystem-dev libboost-python-dev libprotobuf-dev protobuf-compiler libgoogle-glog-dev
  libgflags-dev libhdf5-dev liblmdb-dev libleveldb-dev libsnappy-dev libopenblas-dev libopencv-dev
  python3-dev python3-numpy"
RUNTIME_PACKAGES="python3-protobuf python3-skimage python3-six python3-pydot graphviz"

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
PY=${CAFFE_PYTHON:-/usr/bin/python3}
cache=${CAFFESEG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caffeseg}

say() { echo "build_caffe: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

py_tag() {
  "$PY" -c 'import sys; print("py%d%d" % sys.version_info[:2])'
}

prefix_for_python() {
  # Keyed by commit and Python; an interpreter other than the system one gets its own folder,
  # since two builds for two 3.11 interpreters are not interchangeable.
  local tag key
  tag=$(py_tag)
  key="caffe-${CAFFE_SHORT}-${tag}"
  if [ "$(readlink -f "$PY")" != "$(readlink -f /usr/bin/python3 2>/dev/null || true)" ]; then
    key="${key}-$(readlink -f "$PY" | sha256sum | cut -c1-8)"
  fi
  echo "$cache/$key"
}

stamp_is_current() {
  local stamp="$1/$STAMP_NAME"
  [ -f "$stamp" ] || return 1
  grep -qx "commit=$CAFFE_COMMIT" "$stamp" && grep -qx "recipe=$RECIPE" "$stamp" \
    && grep -qx "python=$(readlink -f "$PY")" "$stamp"
}

missing_packages() {
  local p out=""
  for p in $BUILD_PACKAGES $RUNTIME_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out="$out $p"
  done
  echo "$out"
}

install_packages() {
  command -v dpkg-query >/dev/null 2>&1 || {
    say "not a Debian system: install the equivalents of: $BUILD_PACKAGES $RUNTIME_PACKAGES"; return 0; }
  local missing
  missing=$(missing_packages)
  [ -z "$missing" ] && return 0
  [ "${CAFFE_SKIP_APT:-0}" = 1 ] && die "missing Debian packages:$missing (CAFFE_SKIP_APT=1 forbids apt-get)"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "missing Debian packages:$missing; install them as root"
    sudo="sudo"
  fi
  say "installing Debian packages:$missing"
  # Another apt-get (a browser-deps run, another build) may hold the lock: wait for it.
  $sudo apt-get -o DPkg::Lock::Timeout=900 update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $missing >/dev/null
  missing=$(missing_packages)
  [ -z "$missing" ] || die "apt-get did not install:$missing"
}

fetch_source() {
  # Leaves the pristine tree at $1/src (no other files in $1 are used).
  local work="$1" shared
  shared="$(dirname "$repo")/shared/third_party/bvlc-caffe-${CAFFE_SHORT}.tar.gz"
  local tarball="${CAFFE_TARBALL:-$shared}"
  if [ -f "$tarball" ]; then
    say "source: $tarball"
    if echo "$CAFFE_TARBALL_SHA256  $tarball" | sha256sum -c --quiet - >/dev/null 2>&1; then
      say "sha256 $CAFFE_TARBALL_SHA256: the pristine git-archive tarball"
    elif [ "$tarball" = "$shared" ]; then
      die "$tarball: sha256 is not $CAFFE_TARBALL_SHA256 (../shared/third_party/README.md's)"
    else
      # Another archive of the commit (GitHub's) has other bytes: the tree check below decides.
      say "not the git-archive tarball (sha256 differs); checking its files against the commit's tree"
    fi
  else
    say "source: $CAFFE_URL (no tarball at $tarball)"
    command -v curl >/dev/null 2>&1 || die "curl is needed to download $CAFFE_URL"
    curl -fsSL --retry 3 -o "$work/caffe.tar.gz" "$CAFFE_URL" || die "download of $CAFFE_URL failed"
    tarball="$work/caffe.tar.gz"
  fi
  mkdir "$work/unpack"
  tar -xf "$tarball" -C "$work/unpack"
  local top
  top=$(find "$work/unpack" -mindepth 1 -maxdepth 1)
  [ "$(echo "$top" | wc -l)" = 1 ] && [ -d "$top" ] || die "$tarball: expected one top folder"
  mv "$top" "$work/src"
  rmdir "$work/unpack"
  rm -f "$work/caffe.tar.gz"
  verify_tree "$work/src"
}

verify_tree() {
  # Hash the extracted files as git would and compare with the commit's tree id: proves every
  # file (content, name, executable bit) is the commit's, none added or missing.
  command -v git >/dev/null 2>&1 || die "git is needed to check the source tree against commit $CAFFE_COMMIT"
  local got
  got=$(cd "$1" && GIT_DIR="$1/../tree-check.git" git init -q --bare "$1/../tree-check.git" \
    && GIT_DIR="$1/../tree-check.git" GIT_WORK_TREE="$1" git -c core.autocrlf=false add -A -f . \
    && GIT_DIR="$1/../tree-check.git" git write-tree)
  rm -rf "$1/../tree-check.git"
  [ "$got" = "$CAFFE_TREE" ] || die "source tree is $got, not commit $CAFFE_COMMIT's tree $CAFFE_TREE"
  say "source tree verified: git tree $CAFFE_TREE of commit $CAFFE_COMMIT"
}

replace_in() {
  # replace_in FILE OLD NEW: a literal replacement that must happen (the build stops otherwise).
  local file="$1" old="$2" new="$3"
  grep -qF -- "$old" "$file" || die "compile fix: '$old' not found in $file"
  OLD="$old" NEW="$new" "$PY" - "$file" <<'EOF'
import os, sys
path = sys.argv[1]
with open(path) as f:
    text = f.read()
with open(path, "w") as f:
    f.write(text.replace(os.environ["OLD"], os.environ["NEW"]))
EOF
}

apply_compile_fixes() {
  # Two API removals in Debian 12's libraries; neither changes a computed number.
  local src="$1"
  # protobuf 3.21: SetTotalBytesLimit takes only the limit (the warning threshold argument is gone).
  replace_in "$src/src/caffe/util/io.cpp" \
    "SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)" "SetTotalBytesLimit(kProtoReadBytesLimit)"
  # OpenCV 4: the C constants CV_LOAD_IMAGE_* are gone; the cv:: enums have the same values.
  local f
  for f in src/caffe/util/io.cpp src/caffe/layers/window_data_layer.cpp src/caffe/test/test_io.cpp; do
    replace_in "$src/$f" "CV_LOAD_IMAGE_COLOR" "cv::IMREAD_COLOR"
    if grep -qF "CV_LOAD_IMAGE_GRAYSCALE" "$src/$f"; then
      replace_in "$src/$f" "CV_LOAD_IMAGE_GRAYSCALE" "cv::IMREAD_GRAYSCALE"
    fi
  done
  ! grep -rqF "CV_LOAD_IMAGE_" "$src/src" "$src/tools" "$src/examples" \
    || die "compile fix: CV_LOAD_IMAGE_ still used in $(grep -rlF CV_LOAD_IMAGE_ "$src/src" "$src/tools" "$src/examples")"
}

build() {
  local prefix="$1" work="$1.partial"
  rm -rf "$work"
  mkdir -p "$work"
  local t0
  t0=$(date +%s)
  fetch_source "$work"
  apply_compile_fixes "$work/src"
  local inc lib
  inc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  lib=$("$PY" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")))')
  [ -f "$inc/Python.h" ] || die "$inc/Python.h missing: install the headers of $PY (python3-dev)"
  "$PY" -c 'import numpy' 2>/dev/null || die "$PY cannot import numpy (python3-numpy)"
  mkdir "$work/build"
  (cd "$work/build" && cmake ../src \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" \
    -DCPU_ONLY=ON -DBLAS=Open -DUSE_OPENCV=ON -DUSE_LMDB=ON -DUSE_LEVELDB=ON -DUSE_HDF5=ON \
    -DBUILD_python=ON -DBUILD_python_layer=ON -Dpython_version=3 -DBUILD_docs=OFF \
    -DPYTHON_EXECUTABLE="$PY" -DPYTHON_INCLUDE_DIR="$inc" -DPYTHON_LIBRARY="$lib" \
    > "$work/cmake.log" 2>&1) || { tail -40 "$work/cmake.log" >&2; die "cmake failed (log: $work/cmake.log)"; }
  local jobs=${CAFFE_JOBS:-$(nproc)}
  # Installed in place (Caffe's install RPATH is the absolute prefix); the stamp, written last,
  # is what marks it complete.
  rm -rf "$prefix"
  say "compiling with $jobs jobs (log: $work/make.log); about 20 minutes on 2 cores"
  (cd "$work/build" && make -j"$jobs" all > "$work/make.log" 2>&1 && make install >> "$work/make.log" 2>&1) \
    || { tail -40 "$work/make.log" >&2; die "make failed (log: $work/make.log)"; }
  # A build is only complete once its pycaffe imports with the interpreter it is for.
  (cd / && PYTHONPATH="$prefix/python" "$PY" -c 'import caffe, caffe._caffe; caffe.Net') \
    || die "the built pycaffe does not import with $PY"
  # The install tree (lib/, bin/, python/) is what is kept; sources and objects are dropped.
  cp "$work/cmake.log" "$work/make.log" "$prefix/"
  # pycaffe's own test suite, laid out as in the source: its caffe.draw test reads the
  # prototxt files of models/ and examples/ three folders above itself.
  mkdir -p "$prefix/pycaffe-tests/python/caffe"
  cp -r "$work/src/python/caffe/test" "$prefix/pycaffe-tests/python/caffe/test"
  (cd "$work/src" && find models examples -name '*.prototxt' -print0 \
    | xargs -0 cp --parents -t "$prefix/pycaffe-tests")
  local t1
  t1=$(date +%s)
  {
    echo "commit=$CAFFE_COMMIT"
    echo "tree=$CAFFE_TREE"
    echo "recipe=$RECIPE"
    echo "python=$(readlink -f "$PY")"
    echo "python_version=$("$PY" -c 'import platform; print(platform.python_version())')"
    echo "numpy_version=$("$PY" -c 'import numpy; print(numpy.__version__)')"
    echo "build_seconds=$((t1 - t0))"
    echo "jobs=$jobs"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } > "$prefix/$STAMP_NAME.tmp"
  mv "$prefix/$STAMP_NAME.tmp" "$prefix/$STAMP_NAME"
  rm -rf "$work"
  say "built in $((t1 - t0)) s"
}

main() {
  [ -x "$PY" ] || die "interpreter $PY not found (set CAFFE_PYTHON)"
  local prefix
  prefix=$(prefix_for_python)
  if [ "${1:-}" = "--prefix" ]; then echo "$prefix"; return 0; fi
  if [ "${1:-}" = "--check-source" ]; then
    CHECK_SCRATCH=$(mktemp -d)
    trap 'rm -rf "$CHECK_SCRATCH"' EXIT
    fetch_source "$CHECK_SCRATCH"
    return 0
  fi
  mkdir -p "$cache"
  # One build at a time per cache: a second `make caffe` waits, then finds the stamp.
  exec 9> "$cache/.build.lock"
  flock 9
  if stamp_is_current "$prefix"; then
    say "cached: $prefix"
  else
    install_packages
    build "$prefix"
  fi
  echo "$prefix"
}

main "$@"
