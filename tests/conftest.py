"""Test configuration: hypothesis profiles and the shared skip helpers.

Profiles: ``ci`` (bounded, derandomised: what .ci/run uses, set by CI=true) and ``dev`` (more
examples, random). Select one with HYPOTHESIS_PROFILE=dev.
"""

import os

# Without an NVIDIA device, CUDA kernels run under Numba's simulator. This must be decided before
# anything imports numba.cuda, so it is set here, first. On a GPU machine nothing changes and the
# tests marked `gpu` run on the device.
if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _hypothesis_settings_chain_reset(request):
    """Restore a hypothesis test's own settings before each parametrized invocation.

    hypothesis 6.170's pytest plugin wraps a parametrized test's settings in a new settings object
    at every invocation, with the previous wrapper as its parent (``_hypothesis_pytestplugin.py``,
    the differing_executors suppression), so a test function with ~900 parameter sets (the catalog's
    edge-case template) builds a fallback chain deeper than Python's recursion limit and every later
    invocation fails with RecursionError. Resetting to the decorated settings keeps the chain at
    its decorated depth; the plugin's wrapper is still applied once per invocation.
    """
    fn = getattr(request.node, "obj", None)
    fn = getattr(fn, "__func__", fn)
    if fn is not None and getattr(fn, "is_hypothesis_test", False):
        base = fn.__dict__.setdefault("_gpwref_base_settings", fn._hypothesis_internal_use_settings)
        fn._hypothesis_internal_use_settings = base
