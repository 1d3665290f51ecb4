//! Raw `f32` access to candle CPU tensors for the fast kernels, and the small helpers they share.

use candle_core::{bail, CpuStorage, Device, Layout, Result, Shape, Storage, Tensor};

/// The contiguous `f32` slice a layout describes inside a CPU storage.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("umbra-kernels {op}: expected a contiguous input (call .contiguous() first)"),
    }
}

/// Runs `f` on the contiguous `f32` data of a CPU tensor (copying it to contiguous first if needed).
pub(crate) fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cs) => f(f32_slice(cs, l, op)?),
        _ => bail!("umbra-kernels {op}: the fast kernel runs on CPU tensors only"),
    }
}

/// A CPU `f32` tensor (with no autograd history) from a vector.
pub(crate) fn tensor<S: Into<Shape>>(v: Vec<f32>, shape: S) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Output storage for a `cpu_fwd`.
pub(crate) fn output<S: Into<Shape>>(v: Vec<f32>, shape: S) -> (CpuStorage, Shape) {
    (CpuStorage::F32(v), shape.into())
}

/// A raw pointer that may cross rayon task boundaries; every user writes disjoint ranges.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    #[inline(always)]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// Threads available to the kernels: the current rayon pool.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// gemm's parallelism for a call made outside any per-item rayon loop.
pub(crate) fn gemm_par(nt: usize) -> gemm::Parallelism {
    if nt > 1 {
        gemm::Parallelism::Rayon(nt)
    } else {
        gemm::Parallelism::None
    }
}

/// Row-major matrix product on raw strides: dst[m×n] (= dst·acc) + beta · lhs[m×k] · rhs[k×n].
/// Strides are (row stride, column stride) in elements.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    beta: f32,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * dst_rs + j * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0f32,
        beta,
        false,
        false,
        false,
        par,
    )
}

/// A vector of `n` uninitialised `f32`s, for outputs that a kernel overwrites completely before anything
/// reads them (saves the zeroing pass, which for activation-sized buffers costs as much as a copy).
#[allow(clippy::uninit_vec)]
pub(crate) fn uninit_vec(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns and every caller writes all n values before reading them.
    unsafe { v.set_len(n) };
    v
}

/// `gemm` packs its left operand into panels unless that operand is already column-major and the product
/// has at most `threshold × 6` columns (threshold 8, or 16 multi-threaded, by default). The convolutions'
/// im2col tiles are already column-major in the transposed product gemm runs, with `C_out` (≤ 384)
/// columns, so the default copies every tile a second time. Raised to 64 once, before the first kernel
/// call. Measured single-thread, conv 3×3 64→64 on [64, 64, 32, 32]: forward 31 → 29 ms, forward +
/// backward 105 → 101 ms. Larger products (e.g. matmul 1024³) are still packed.
pub(crate) fn tune_gemm() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gemm::set_lhs_packing_threshold_single_thread(64);
        gemm::set_lhs_packing_threshold_multi_thread(64);
    });
}

/// acc += x, elementwise (partial gradient sums from parallel chunks).
pub(crate) fn add_assign(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}
