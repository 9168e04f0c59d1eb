"""Inputs that used to fail with a message that did not say what to do, or not at all up front:
torch tensors (requires_grad, bfloat16), and memory limits other than MemAvailable (rlimits, cgroups)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpwref
from gpwref import errors

X = np.random.default_rng(0).normal(size=(12, 6))
Y = np.arange(12) // 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- torch tensors ---------------------------------------------------------------------------------

def test_tensor_with_requires_grad_is_read_as_its_values():
    torch = pytest.importorskip("torch")
    tensor = torch.tensor(X, requires_grad=True)
    got = gpwref.compute("multi_similarity", tensor, torch.tensor(Y))
    want = gpwref.compute("multi_similarity", X, Y)
    assert got.loss == want.loss
    assert np.array_equal(got.grad_emb, want.grad_emb)
    assert tensor.grad is None  # only read: no graph was touched


def test_bfloat16_tensor_is_read_as_the_float64_of_its_values():
    torch = pytest.importorskip("torch")
    tensor = torch.tensor(X).to(torch.bfloat16).requires_grad_(True)
    # bfloat16 keeps 8 significant bits: the values the tensor holds, rounded by hand from X
    mantissa, exponent = np.frexp(X)
    rounded = np.ldexp(np.round(mantissa * 2**8) / 2**8, exponent)  # ties do not occur in this draw
    got = gpwref.compute("multi_similarity", tensor, Y)
    want = gpwref.compute("multi_similarity", rounded, Y)
    assert got.loss == want.loss
    assert np.array_equal(got.grad_emb, want.grad_emb)


def test_label_tensors_integer_accepted_bool_and_float_refused_by_the_label_rule():
    torch = pytest.importorskip("torch")
    want = gpwref.compute("multi_similarity", X, Y).loss
    assert gpwref.compute("multi_similarity", X, torch.tensor(Y, dtype=torch.int32)).loss == want
    with pytest.raises(gpwref.GpwrefError, match="labels: must have an integer dtype"):
        gpwref.compute("multi_similarity", X, torch.tensor(Y % 2, dtype=torch.bool))
    with pytest.raises(gpwref.GpwrefError, match="labels: must have an integer dtype"):
        gpwref.compute("multi_similarity", X, torch.tensor(Y, dtype=torch.float32, requires_grad=True))


def test_ref_tensor_in_bfloat16_is_accepted():
    torch = pytest.importorskip("torch")
    ref = torch.tensor(X[:4]).to(torch.bfloat16)
    got = gpwref.compute("multi_similarity", X, Y, ref=ref, ref_labels=torch.tensor(Y[:4]))
    want = gpwref.compute("multi_similarity", X, Y, ref=ref.double().numpy(), ref_labels=Y[:4])
    assert got.loss == want.loss


# --- memory: the limits the process really has ------------------------------------------------------

def _under_address_space_limit(body: str) -> subprocess.CompletedProcess:
    """Run ``body`` with RLIMIT_AS = the current virtual size + 4 GiB (as under ``ulimit -v``)."""
    code = textwrap.dedent("""
        import resource, time
        import numpy as np
        import gpwref
        size = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:")][0]
        resource.setrlimit(resource.RLIMIT_AS, (size + (4 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
        X = np.random.default_rng(0).normal(size=(12, 6))
        y = np.arange(12) // 3
    """) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_rlimit_as_refuses_ms_at_m_12000_up_front_with_the_figure():
    done = _under_address_space_limit("""
        Xb = np.random.default_rng(0).normal(size=(12000, 6))
        start = time.perf_counter()
        try:
            gpwref.compute("multi_similarity", Xb, np.arange(12000) // 3)
        except gpwref.GpwrefError as error:
            assert time.perf_counter() - start < 1.0, "refused, but not up front"
            print("REFUSED", error)
    """)
    assert done.returncode == 0, done.stderr
    assert "REFUSED embeddings:" in done.stdout, done.stdout + done.stderr
    assert "12000 x 12000 pair matrices need about 10.7 GiB" in done.stdout  # 10 arrays x 12000^2 x 8 B
    assert "RLIMIT_AS" in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("bins, gib", [(10**6, "6.4"), (10**9, "6437.3")])
def test_fast_ap_refuses_huge_bin_counts_up_front(bins, gib):
    # 6 float64 arrays of 12 x 12 x (bins + 1): 12 * 12 * (bins + 1) * 8 * 6 bytes
    assert f"{12 * 12 * (bins + 1) * 8 * 6 / 2**30:.1f}" == gib
    done = _under_address_space_limit(f"""
        try:
            gpwref.compute("fast_ap", X, y, num_bins={bins})
        except gpwref.GpwrefError as error:
            print("REFUSED", error)
    """)
    assert done.returncode == 0, done.stderr
    assert "REFUSED num_bins:" in done.stdout, done.stdout + done.stderr
    assert f"need about {gib} GiB" in done.stdout


def _fake_files(monkeypatch, files: dict[str, str]) -> None:
    real = errors._read_text
    monkeypatch.setattr(errors, "_read_text", lambda path: files[path] if path in files else
                        (None if path.startswith("/sys/fs/cgroup") or path == "/proc/self/cgroup" else real(path)))


def test_cgroup_v2_limit_of_an_ancestor_refuses_with_the_figure(monkeypatch):
    _fake_files(monkeypatch, {
        "/proc/self/cgroup": "0::/user.slice/job.scope\n",
        "/sys/fs/cgroup/user.slice/job.scope/memory.max": "max\n",
        "/sys/fs/cgroup/user.slice/job.scope/memory.current": "1000\n",
        "/sys/fs/cgroup/user.slice/memory.max": f"{1 << 30}\n",
        "/sys/fs/cgroup/user.slice/memory.current": f"{768 << 20}\n",
    })
    assert errors.memory_limits()["the cgroup v2 memory.max"] == 256 << 20
    m = 2000  # 10 arrays of 2000 x 2000 float64: 0.30 GiB > 0.25 GiB left
    with pytest.raises(gpwref.GpwrefError, match=r"need about 0\.3 GiB .* only 0\.2 GiB is left under the cgroup v2"):
        gpwref.compute("multi_similarity", np.ones((m, 2)), np.zeros(m, dtype=int))


def test_cgroup_v1_limit_refuses_and_no_limit_means_no_entry(monkeypatch):
    files = {
        "/proc/self/cgroup": "5:cpu:/\n4:memory:/docker/abc\n0::/\n",
        "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{512 << 20}\n",
        "/sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": f"{256 << 20}\n",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "unlimited"
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": "1\n",
    }
    _fake_files(monkeypatch, files)
    assert errors.memory_limits()["the cgroup v1 memory limit"] == 256 << 20
    with pytest.raises(gpwref.GpwrefError, match="cgroup v1 memory limit"):
        gpwref.compute("multi_similarity", np.ones((2000, 2)), np.zeros(2000, dtype=int))
    files["/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes"] = "9223372036854771712\n"
    assert "the cgroup v1 memory limit" not in errors.memory_limits()
    assert gpwref.compute("multi_similarity", X, Y).loss >= 0  # small calls still run
