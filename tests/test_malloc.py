"""finnex_ml.malloc: freed large buffers are reused instead of faulted in again."""

import json
import subprocess
import sys

import pytest

from finnex_ml import malloc

# allocate, touch and free a 64 MB buffer twice; report the page faults of the second round
PROBE = """
import json, resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from finnex_ml.malloc import keep_freed_memory
    assert keep_freed_memory()
a = np.ones(8 << 20); del a
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(8 << 20); del a
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0))
"""


def _faults(mode: str, env: dict | None = None) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_second_large_allocation_reuses_freed_memory():
    default, tuned = _faults("default"), _faults("tuned")
    # glibc's default maps the 64 MB afresh: at least one fault per page, 32 with 2 MiB huge
    # pages, 16,384 with 4 KiB pages; the tuned heap hands the freed buffer back untouched
    assert default >= 32
    assert tuned < 16


def test_switch_off_by_environment(monkeypatch):
    monkeypatch.setattr(malloc, "_applied", None)
    monkeypatch.setenv("FINNEX_MALLOC_TUNING", "0")
    assert malloc.keep_freed_memory() is False
    assert malloc._applied is False  # remembered: a later call does not apply it either
    monkeypatch.delenv("FINNEX_MALLOC_TUNING")
    assert malloc.keep_freed_memory() is False


def test_definitions_apply_it():
    import finnex_assets.definitions  # noqa: F401

    assert malloc._applied is (sys.platform.startswith("linux") and malloc.keep_freed_memory())
