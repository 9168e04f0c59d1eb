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
