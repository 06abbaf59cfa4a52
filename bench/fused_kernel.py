"""Would a fused C kernel speed up the solver's loop? A measurement, kept so it is not redone.

    python -m bench.fused_kernel [--repeats 15] [--iterations 100]

The forward at 250x30, B=32, 100 iterations spends ~60% of its time in the scaling loop
(``otalign.ot.solver._UnbalancedSteps._step_in_place``): per iteration two batched NumPy
mat-vecs (64 OpenBLAS gemv calls) and the exp2/log2 row update. The idea tested here: one C
call per chunk of iterations that keeps each item's 30 KB kernel in L1 across both mat-vecs and
every iteration, instead of streaming the 1 MB batch of kernels through L2 twice per iteration.

Contenders, on the same inputs (semi-relaxed, lam_rows = rho/(rho+eps), lam_cols = 1, the shared
kernel of the benchmark's cosine costs), single-threaded, round robin over ``--repeats``:
- ``numpy``: the loop's exact arithmetic (``_step_in_place``: the same ufuncs with ``out=``);
- ``C, AVX2``: intrinsics, 4x8 register-blocked rows, 4 columns per dot-product pass, glibc's
  vector exp/log (libmvec ``_ZGVdN8v_*``), no checks inside the chunk;
- ``C, AVX2, lam_rows=1``: the same without the exp2/log2 row update (a lower bound on the
  mat-vecs' own cost; not the same problem, speed reference only).

Needs gcc, an x86-64 CPU with AVX2 and FMA, and glibc >= 2.35 (libmvec exp2f/log2f); otherwise it
says which is missing and exits 2. Results: docs/benchmarks.md, "Fused C kernel".
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

SOURCE = r"""
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <immintrin.h>

__m256 _ZGVdN8v_expf(__m256);
__m256 _ZGVdN8v_logf(__m256);
__m256 _ZGVdN8v_exp2f(__m256);
__m256 _ZGVdN8v_log2f(__m256);

static inline float hsum(__m256 x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline void map8(__m256 (*fn)(__m256), const float *x, float *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, fn(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float buf[8] = {1, 1, 1, 1, 1, 1, 1, 1};
        memcpy(buf, x + i, (n - i) * sizeof(float));
        _mm256_storeu_ps(buf, fn(_mm256_loadu_ps(buf)));
        memcpy(y + i, buf, (n - i) * sizeof(float));
    }
}

/* n_iter scaling iterations of every item, item by item; kernels (B,N,T) contiguous */
void scaling_chunk_f32(int batch, int n_rows, int n_cols, int n_iter,
    const float *row_kernel, const float *col_kernel_t,
    const float *c_row, const float *log2_c_row, const float *log_c_col,
    float lam_rows, float lam_cols, float *log_v, float *u, float *scratch)
{
    float *v = scratch, *col_sums = scratch + n_cols + 8;
    const __m256 neg_lam = _mm256_set1_ps(-lam_rows);
    for (int b = 0; b < batch; ++b) {
        const float *K = row_kernel + (size_t)b * n_rows * n_cols;
        const float *H = col_kernel_t + (size_t)b * n_rows * n_cols;
        float *lv = log_v + (size_t)b * n_cols, *ub = u + (size_t)b * n_rows;
        const float *cr = c_row + (size_t)b * n_rows, *l2cr = log2_c_row + (size_t)b * n_rows;
        const float *lcc = log_c_col + (size_t)b * n_cols;
        for (int it = 0; it < n_iter; ++it) {
            map8(_ZGVdN8v_expf, lv, v, n_cols);
            int i0 = 0;
            for (; i0 + 32 <= n_rows; i0 += 32) {
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                const float *Kp = K + i0;
                for (int j = 0; j < n_cols; ++j, Kp += n_rows) {
                    const __m256 vj = _mm256_broadcast_ss(v + j);
                    a0 = _mm256_fmadd_ps(vj, _mm256_loadu_ps(Kp), a0);
                    a1 = _mm256_fmadd_ps(vj, _mm256_loadu_ps(Kp + 8), a1);
                    a2 = _mm256_fmadd_ps(vj, _mm256_loadu_ps(Kp + 16), a2);
                    a3 = _mm256_fmadd_ps(vj, _mm256_loadu_ps(Kp + 24), a3);
                }
                __m256 acc[4] = {a0, a1, a2, a3};
                for (int q = 0; q < 4; ++q) {
                    const int i = i0 + 8 * q;
                    __m256 r;
                    if (lam_rows == 1.0f) r = _mm256_div_ps(_mm256_loadu_ps(cr + i), acc[q]);
                    else r = _ZGVdN8v_exp2f(_mm256_fmadd_ps(neg_lam, _ZGVdN8v_log2f(acc[q]), _mm256_loadu_ps(l2cr + i)));
                    _mm256_storeu_ps(ub + i, r);
                }
            }
            for (; i0 < n_rows; ++i0) {
                float s = 0.0f;
                for (int j = 0; j < n_cols; ++j) s += v[j] * K[(size_t)j * n_rows + i0];
                ub[i0] = lam_rows == 1.0f ? cr[i0] / s : exp2f(l2cr[i0] + (-lam_rows) * log2f(s));
            }
            int j = 0;
            for (; j + 4 <= n_cols; j += 4) {
                const float *H0 = H + (size_t)j * n_rows, *H1 = H0 + n_rows, *H2 = H1 + n_rows, *H3 = H2 + n_rows;
                __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
                int i = 0;
                for (; i + 8 <= n_rows; i += 8) {
                    const __m256 ui = _mm256_loadu_ps(ub + i);
                    s0 = _mm256_fmadd_ps(ui, _mm256_loadu_ps(H0 + i), s0);
                    s1 = _mm256_fmadd_ps(ui, _mm256_loadu_ps(H1 + i), s1);
                    s2 = _mm256_fmadd_ps(ui, _mm256_loadu_ps(H2 + i), s2);
                    s3 = _mm256_fmadd_ps(ui, _mm256_loadu_ps(H3 + i), s3);
                }
                float t0 = hsum(s0), t1 = hsum(s1), t2 = hsum(s2), t3 = hsum(s3);
                for (; i < n_rows; ++i) { t0 += H0[i] * ub[i]; t1 += H1[i] * ub[i]; t2 += H2[i] * ub[i]; t3 += H3[i] * ub[i]; }
                col_sums[j] = t0; col_sums[j + 1] = t1; col_sums[j + 2] = t2; col_sums[j + 3] = t3;
            }
            for (; j < n_cols; ++j) {
                const float *Hj = H + (size_t)j * n_rows;
                __m256 s0 = _mm256_setzero_ps();
                int i = 0;
                for (; i + 8 <= n_rows; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ub + i), _mm256_loadu_ps(Hj + i), s0);
                float t = hsum(s0);
                for (; i < n_rows; ++i) t += Hj[i] * ub[i];
                col_sums[j] = t;
            }
            map8(_ZGVdN8v_logf, col_sums, col_sums, n_cols);
            for (int q = 0; q < n_cols; ++q) lv[q] = lam_cols == 1.0f ? lcc[q] - col_sums[q] : lcc[q] + (-lam_cols) * col_sums[q];
        }
    }
}
"""


def _missing() -> str:
    """Why the C contender cannot run here ('' when it can)."""
    if shutil.which("gcc") is None:
        return "gcc not found"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no /proc/cpuinfo (not Linux x86-64)"
    if " avx2" not in flags or " fma" not in flags:
        return "CPU without AVX2/FMA"
    return ""


def _compile(directory: str) -> ctypes.CDLL:
    source, library = Path(directory) / "fused.c", Path(directory) / "fused.so"
    source.write_text(SOURCE)
    command = ["gcc", "-O3", "-mavx2", "-mfma", "-fno-math-errno", "-fPIC", "-shared", str(source), "-o", str(library), "-lmvec", "-lm"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fused_kernel: compiling failed (glibc >= 2.35 with libmvec exp2f/log2f is needed):\n{done.stderr}")
    lib = ctypes.CDLL(str(library))
    pointer = ctypes.c_void_p
    lib.scaling_chunk_f32.argtypes = [ctypes.c_int] * 4 + [pointer] * 5 + [ctypes.c_float] * 2 + [pointer] * 3
    return lib


def _inputs(n_rows: int, n_cols: int, eps: float, rho_rows: float):
    """The loop's constants for the benchmark's cosine costs (bench.solver._costs), one shared
    kernel anchored at psi_hat = 0, as otalign.ot.solve builds them."""
    import numpy as np

    from bench.solver import _costs

    cost = _costs(n_rows, n_cols).numpy()  # (B,T,N)
    log_kernel_t = np.ascontiguousarray((-cost / eps).transpose(0, 2, 1))  # (B,N,T)
    row_shift = log_kernel_t.max(axis=1, keepdims=True)  # sigma (B,1,T)
    kernel = np.exp(log_kernel_t - row_shift).astype(np.float32)
    batch = cost.shape[0]
    lam_rows = np.float32(rho_rows / (rho_rows + eps))
    log_a = np.full((batch, 1, n_rows), -np.log(n_rows), np.float32)
    log_b = np.full((batch, 1, n_cols), -np.log(n_cols), np.float32)
    phi_hat = -row_shift  # the shared kernel's anchor (_StabilisedKernel.share_row_kernel)
    log_c_row = (lam_rows * (log_a - row_shift) - phi_hat).astype(np.float32)
    return {
        "kernel": kernel,
        "lam_rows": lam_rows,
        "c_row": np.exp(log_c_row),
        "log2_c_row": (log_c_row / np.log(2)).astype(np.float32),
        "log_c_col": (log_b - 0.0).astype(np.float32),  # tau = -psi_hat = 0
    }


def numpy_loop(inputs: dict, n_iter: int):
    """``_step_in_place``'s arithmetic (lam_cols = 1, no drift checks: none fire here)."""
    import numpy as np

    kernel, batch = inputs["kernel"], inputs["kernel"].shape[0]
    n_cols, n_rows = kernel.shape[1:]
    log_v = np.zeros((batch, 1, n_cols), np.float32)
    v, col_sums = np.empty_like(log_v), np.empty_like(log_v)
    row_sums, u = np.empty((batch, 1, n_rows), np.float32), np.empty((batch, 1, n_rows), np.float32)
    col_kernel = kernel.transpose(0, 2, 1)
    for _ in range(n_iter):
        np.exp(log_v, out=v)
        np.matmul(v, kernel, out=row_sums)
        np.log2(row_sums, out=row_sums)
        np.multiply(row_sums, -inputs["lam_rows"], out=row_sums)
        row_sums += inputs["log2_c_row"]
        np.exp2(row_sums, out=u)
        np.matmul(u, col_kernel, out=col_sums)
        np.log(col_sums, out=col_sums)
        np.subtract(inputs["log_c_col"], col_sums, out=log_v)
    return log_v, u


def c_loop(lib, inputs: dict, n_iter: int, lam_rows=None):
    import numpy as np

    kernel, batch = inputs["kernel"], inputs["kernel"].shape[0]
    n_cols, n_rows = kernel.shape[1:]
    log_v = np.zeros((batch, 1, n_cols), np.float32)
    u = np.empty((batch, 1, n_rows), np.float32)
    scratch = np.empty(2 * n_cols + 16, np.float32)
    lam = inputs["lam_rows"] if lam_rows is None else np.float32(lam_rows)
    lib.scaling_chunk_f32(batch, n_rows, n_cols, n_iter, kernel.ctypes.data, kernel.ctypes.data, inputs["c_row"].ctypes.data,
                          inputs["log2_c_row"].ctypes.data, inputs["log_c_col"].ctypes.data, lam, 1.0, log_v.ctypes.data, u.ctypes.data, scratch.ctypes.data)
    return log_v, u


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--rho-rows", type=float, default=1.0)
    args = parser.parse_args(argv)
    reason = _missing()
    if reason:
        print(f"fused_kernel: not run: {reason}")
        return 2
    import numpy as np
    import torch

    torch.set_num_threads(1)
    inputs = _inputs(250, 30, args.eps, args.rho_rows)
    with tempfile.TemporaryDirectory() as directory:
        lib = _compile(directory)
        reference, fused = numpy_loop(inputs, args.iterations), c_loop(lib, inputs, args.iterations)
        agreement = max(float(np.abs(reference[0] - fused[0]).max()), float((np.abs(reference[1] - fused[1]) / np.abs(reference[1])).max()))
        contenders = {"numpy (the loop today)": lambda: numpy_loop(inputs, args.iterations),
                      "C, AVX2, L1-resident": lambda: c_loop(lib, inputs, args.iterations),
                      "C, AVX2, lam_rows=1 (no exp2/log2)": lambda: c_loop(lib, inputs, args.iterations, 1.0)}
        for run in contenders.values():
            run()  # warm-up
        wall: dict[str, list] = {name: [] for name in contenders}
        cpu: dict[str, list] = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, run in contenders.items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                run()
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
    print(f"250x30, B=32, {args.iterations} iterations, eps {args.eps}, rho_rows {args.rho_rows}, fp32, 1 thread, {args.repeats} repeats; "
          f"C vs NumPy: max |log v| / relative u difference {agreement:.1e}; load average {os.getloadavg()[0]:.1f}")
    print("| loop | wall median (ms) | wall min (ms) | CPU median (ms) | / numpy (wall median) |")
    print("|---|---|---|---|---|")
    base = statistics.median(wall["numpy (the loop today)"])
    for name in contenders:
        median = statistics.median(wall[name])
        print(f"| {name} | {median * 1e3:.2f} | {min(wall[name]) * 1e3:.2f} | {statistics.median(cpu[name]) * 1e3:.2f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
