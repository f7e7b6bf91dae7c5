"""``cpu_malloc``: freed activation memory stays mapped instead of page-faulting back in."""

import subprocess
import sys
import textwrap

import pytest

from hpff_dist.engine import cpu_malloc
from hpff_dist.engine.cpu_malloc import configure_cpu_malloc

# A local-learning-like pattern: a module's activations allocated, touched, freed, repeated.
# Straight through libc (malloc/memset/free), so no other heap allocation lands between the
# blocks and glibc's behaviour is deterministic: with its adaptive thresholds the freed blocks
# exceed the trim threshold and go back to the OS every step.
_SCRIPT = textwrap.dedent(
    """
    import ctypes, importlib.util, resource, sys
    # the module alone (it needs only ctypes and torch), without importing the engine package
    spec = importlib.util.spec_from_file_location("cpu_malloc", sys.argv[2])
    cpu_malloc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_malloc)
    if sys.argv[1] == "keep":
        assert cpu_malloc.configure_cpu_malloc()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
    size = 24 << 20  # below glibc's largest mmap threshold, so the heap can keep it
    for step in range(6):
        if step == 2:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(size) for _ in range(3)]
        for block in blocks:
            libc.memset(block, 1, size)
        for block in blocks:
            libc.free(block)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    """
)


def _page_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode, cpu_malloc.__file__],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_memory_is_not_faulted_in_again():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 10_000  # glibc's adaptive trimming returns the pages every step
    assert kept < default / 20


def test_none_keeps_the_defaults_and_bad_settings_are_refused():
    assert configure_cpu_malloc(None) is False
    with pytest.raises(KeyError, match="trim_threshold_mb"):
        configure_cpu_malloc(dict(trim_treshold_mb=64))
    with pytest.raises(ValueError, match="1..32"):
        configure_cpu_malloc(dict(mmap_threshold_mb=64))
    with pytest.raises(ValueError, match="0..2047"):
        configure_cpu_malloc(dict(trim_threshold_mb=4096))


def test_false_off_and_preloaded_allocators_are_left_alone(monkeypatch):
    assert configure_cpu_malloc(False) is False
    with pytest.raises(TypeError, match="integer"):
        configure_cpu_malloc(dict(mmap_threshold_mb=8.5))
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert configure_cpu_malloc() is False  # mallopt would be glibc's, ignored by jemalloc
