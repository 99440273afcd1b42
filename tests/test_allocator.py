"""jobs.allocator: a runner's glibc keeps freed memory for reuse instead of faulting it in anew."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from caffeseg.jobs import allocator

from test_threads import _runner_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_runner_environment_adds_the_retaining_variables():
    env = allocator.runner_environment({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


@pytest.mark.parametrize("chosen", [{"MALLOC_ARENA_MAX_": "2"}, {"MALLOC_MMAP_MAX_": "65536"},
                                    {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}])
def test_an_operators_own_allocator_settings_are_left_alone(chosen):
    env = allocator.runner_environment(dict(chosen))
    assert env == chosen


def test_other_tunables_do_not_count_as_an_allocator_choice():
    env = allocator.runner_environment({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    assert env["MALLOC_MMAP_MAX_"] == "0"


def test_the_scheduler_hands_them_to_each_runner(tmp_path, monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    env = _runner_env(tmp_path, monkeypatch, cpu_slots=1)
    for name, value in allocator.RETAIN_FREED_MEMORY.items():
        assert env[name] == value


# A training loop in miniature: each "step" allocates and writes four tensors of the sizes of
# large activations (20-64 MiB), keeps them alive as a forward does, and frees them as backward
# ends; printed: the minor page faults of each of 10 steps.
FAULTS = r"""
import json, resource, torch
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    alive = [torch.empty(size).fill_(1.0) for size in (16 << 20, 9 << 20, 12 << 20, 5 << 20)]
    while alive:
        alive.pop()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults(extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the variables are glibc's")
def test_under_the_runner_environment_a_steps_tensors_reuse_the_last_steps_pages():
    pages = ((16 + 9 + 12 + 5) << 22) // os.sysconf("SC_PAGE_SIZE")  # the step's 168 MiB
    default = _faults({})
    retained = _faults(allocator.RETAIN_FREED_MEMORY)
    assert min(default[-4:]) > pages // 2, default  # glibc's default: fresh mmaps every step
    assert max(retained[-4:]) < pages // 50, retained  # after a few steps: the same pages again
