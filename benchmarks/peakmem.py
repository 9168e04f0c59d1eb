"""Peak resident memory of one forward + backward of one implementation, in a fresh process.

    python benchmarks/peakmem.py IMPL M D      -> prints the peak bytes above the pre-call baseline

A fresh process with glibc's mmap threshold fixed (``mallopt``), so that every large array is its
own mapping and is returned to the system when freed: the resident set then follows the live
arrays, and the kernel's resettable high-water mark (/proc/self/clear_refs, VmHWM) gives the peak
of the measured call alone. Run by bench_ms.py for the CPU implementations (not timed).
"""

from __future__ import annotations

import ctypes
import os
import sys


def _fix_malloc() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    except OSError:  # pragma: no cover - not glibc
        pass


def main(argv: list[str]) -> int:
    _fix_malloc()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gc

    from benchlib import IMPLS, clustered, peak_rss_delta

    name, m, d = argv[1], int(argv[2]), int(argv[3])
    impl = next(i for i in IMPLS if i.name == name)
    X, y = clustered(m, d)
    state = impl.prepare(X, y)
    impl.run(state)  # compile / warm up
    gc.collect()
    peak = peak_rss_delta(lambda: impl.run(state))
    print(peak if peak is not None else "None")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
