"""Turn a pytest-benchmark JSON run of bench_ms.py / bench_stages.py into Markdown ratio tables.

    python benchmarks/report.py benchmarks/results/cpu-2026-11-22.json > benchmarks/results/cpu-2026-11-22.md

Times are medians over the rounds (IQR and min beside them). "x ref" is the NumPy float64
reference's time divided by the implementation's (above 1: faster), "x np32" the same against the
reference's vectorised float32 path, "x PML" against pytorch-metric-learning on the same device.
GF/s counts 4 m^2 d flops (the two GEMMs) per forward + backward, whatever the implementation does.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

FWD = "forward+backward"
ORDER = ("numpy-ref-f64", "numpy-f32", "numba-f32", "numba-f64", "torch-cpu", "pml-cpu", "ms-official-loop",
         "numba-cuda-f32", "torch-cuda", "torch-cuda-tf32", "pml-cuda")


def load(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def _rows(run: dict):
    for bench in run["benchmarks"]:
        info = bench.get("extra_info", {})
        if "impl" not in info:
            continue
        stats = bench["stats"]
        yield info, {"median": stats["median"], "iqr": stats["iqr"], "min": stats["min"], "rounds": stats["rounds"]}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 10 else f"{seconds:.1f} s"


def _ratio(base: float | None, value: float | None) -> str:
    if not base or not value:
        return "-"
    return f"{base / value:.2f}"


def machine(run: dict) -> str:
    info = run.get("machine_info", {})
    g = info.get("gpwref", {})
    lines = ["| what | value |", "| --- | --- |"]
    lines.append(f"| CPU | {g.get('cpu_model', info.get('cpu', {}).get('brand_raw', '?'))}, {g.get('logical_cpus')} logical CPUs, {g.get('mem_total_gib')} GiB |")
    lines.append(f"| threads | {g.get('threads')} |")
    lines.append(f"| load average at start (1, 5, 15 min) | {g.get('load_average_at_start')} (2 cores; above ~2 other processes share them) |")
    lines.append(f"| BLAS | {g.get('blas')} |")
    versions = ", ".join(f"{k} {g.get(k)}" for k in ("python", "numpy", "scipy", "numba", "numba_cuda", "torch", "pytorch_metric_learning"))
    lines.append(f"| versions | {versions} |")
    gpu = g.get("gpu")
    lines.append(f"| GPU | {gpu if gpu else 'none (' + str(g.get('gpu_absent_because')) + '): GPU figures pending'} |")
    lines.append(f"| run | {run.get('datetime', '?')}, commit {run.get('commit_info', {}).get('id', '?')} (dirty: {run.get('commit_info', {}).get('dirty', '?')}) |")
    return "\n".join(lines)


def forward_backward(run: dict) -> str:
    table = defaultdict(dict)
    extra = {}
    for info, stats in _rows(run):
        if info.get("stage") != FWD:
            continue
        key = (info["m"], info["d"])
        table[key][info["impl"]] = (info, stats)
        extra[key] = info
    impls = [name for name in ORDER if any(name in row for row in table.values())]
    out = ["### Summary: median time (ms) per forward + backward", ""]
    out.append("| m | d | mined neg / pos | " + " | ".join(impls) + " | numba-f32 x np32 | numba-f32 x PML | numba-f32 GF/s |")
    out.append("| --- | --- | --- | " + " | ".join("---" for _ in impls) + " | --- | --- | --- |")
    for (m, d), row in sorted(table.items()):
        info = extra[(m, d)]
        cells = [_ms(row[name][1]["median"]) if name in row else "-" for name in impls]
        numba = row.get("numba-f32", (None, {}))[1].get("median")
        np32 = row.get("numpy-f32", (None, {}))[1].get("median")
        pml = row.get("pml-cpu", (None, {}))[1].get("median")
        gflops = f"{4.0 * m * m * d / numba / 1e9:.0f}" if numba else "-"
        mined = f"{100 * info.get('mined_neg_frac', 0):.1f}% / {100 * info.get('mined_pos_frac', 0):.0f}%"
        out.append(f"| {m} | {d} | {mined} | " + " | ".join(cells) + f" | {_ratio(np32, numba)} | {_ratio(pml, numba)} | {gflops} |")
    out += ["", "### Every implementation", ""]
    out.append("| m | d | impl | precision | median ms | IQR ms | min ms | rounds | x ref | x np32 | x PML | GF/s | peak MB | err value | err dX | first call s | load |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (m, d), row in sorted(table.items()):
        ref = row.get("numpy-ref-f64", (None, {}))[1].get("median")
        np32 = row.get("numpy-f32", (None, {}))[1].get("median")
        for name in impls:
            if name not in row:
                continue
            info, stats = row[name]
            pml_name = "pml-cuda" if info["device"] == "cuda" else "pml-cpu"
            pml = row.get(pml_name, (None, {}))[1].get("median")
            peak = info.get("peak_bytes")
            out.append(
                f"| {m} | {d} | {name} | {info['precision']} | {_ms(stats['median'])} | {_ms(stats['iqr'])} | {_ms(stats['min'])} | "
                f"{stats['rounds']} | {_ratio(ref, stats['median'])} | {_ratio(np32, stats['median'])} | {_ratio(pml, stats['median'])} | "
                f"{4.0 * m * m * d / stats['median'] / 1e9:.1f} | {'-' if peak is None else f'{peak / 2**20:.0f}'} | "
                f"{info.get('err_value', float('nan')):.1e} | {info.get('err_grad_emb', float('nan')):.1e} | {info.get('first_call_s', float('nan')):.2f} | "
                f"{info.get('load_average', float('nan')):.1f} |"
            )
    return "\n".join(out)


def stages(run: dict) -> str:
    table = defaultdict(dict)
    for info, stats in _rows(run):
        if info.get("stage") == FWD:
            continue
        table[(info["m"], info["d"])][(info["impl"], info["stage"])] = stats["median"]
    if not table:
        return ""
    names = ("similarity", "mining+weighting", "embedding gradient")
    out = ["### Stages alone: median ms (numpy-f32 / numba-f32), and the Numba split", ""]
    out.append("| m | d | " + " | ".join(names) + " | numba: gemm S | gemm grad | symmetrize | mining+weighting / both GEMMs | all non-GEMM / both GEMMs |")
    out.append("| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- | --- | --- |")
    for (m, d), row in sorted(table.items()):
        cells = []
        for stage in names:
            a, b = row.get(("numpy-f32", stage)), row.get(("numba-f32", stage))
            cells.append(f"{_ms(a) if a else '-'} / {_ms(b) if b else '-'}")
        gemm_s, gemm_g = row.get(("numba-f32", "gemm S")), row.get(("numba-f32", "gemm grad"))
        sym = row.get(("numba-f32", "symmetrize"))
        mw = row.get(("numba-f32", "mining+weighting"))
        sim, grad = row.get(("numba-f32", "similarity")), row.get(("numba-f32", "embedding gradient"))
        gemms = (gemm_s or 0) + (gemm_g or 0)
        ratio = f"{mw / gemms:.2f}" if mw and gemms else "-"
        non_gemm = (sim or 0) + (mw or 0) + (grad or 0) - gemms
        all_ratio = f"{non_gemm / gemms:.2f}" if gemms and sim and grad and mw else "-"
        out.append(f"| {m} | {d} | " + " | ".join(cells) +
                   f" | {_ms(gemm_s) if gemm_s else '-'} | {_ms(gemm_g) if gemm_g else '-'} | {_ms(sym) if sym else '-'} | {ratio} | {all_ratio} |")
    cuda = {key: v for key, v in table.items() if any(impl == "numba-cuda-f32" for impl, _ in v)}
    if not cuda:
        out += ["", "Numba CUDA stages: no GPU in this run (GPU figures pending)."]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    run = load(argv[1])
    print(f"# MS loss benchmark: {argv[1]}\n")
    print("## Machine\n")
    print(machine(run))
    print("\n## Forward + backward\n")
    print(forward_backward(run))
    text = stages(run)
    if text:
        print("\n## Stages\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
