//! GEMM steps through cuBLASLt.
//!
//! A [`GemmStep`] is row-major; cuBLASLt is column-major. A row-major `[r, c]` matrix is the
//! column-major `[c, r]` matrix with the same bytes, so `D = op(A) op(B)` is computed as
//! `D^T = op(B)^T op(A)^T`: cuBLASLt's first operand is the plan's B, its second the plan's A,
//! and the result is column-major `[n, m]`, which is row-major `[m, n]`. A bias of `n`
//! elements is then a per-row bias of cuBLASLt's D, which is what its bias epilogues add.
//!
//! GEMMs of i8 operands (`dtype` i8, `out_dtype` i32) run on the integer tensor cores (IMMA)
//! with `CUBLAS_COMPUTE_32I` and scale type `CUDA_R_32I`: D is exact. cuBLASLt's rules for
//! them over ordinary layouts ("To use IMMA kernels" under `cublasLtMatmul()`): pointers 4-byte
//! aligned, leading dimensions multiples of 4, the "TN" format (its A transposed, its B not),
//! its `m` and `k` multiples of 4, alpha and beta 0 or 1, and no epilogue. In the plan's terms:
//! B stored `[n, k]` (`trans_b`), A `[m, k]`, `n` and `k` multiples of 4, alpha 1, beta 0, no
//! C and no epilogue; [`GemmCall::new`] refuses anything else.
//!
//! Descriptors and the algorithm are made once per execution context ([`GemmCall::new`]),
//! where buffer addresses are fixed, so [`GemmCall::enqueue`] only calls `cublasLtMatmul`,
//! which CUDA graph capture records like any kernel.

use crate::error::{CudaError, Result};
use crate::plan::{BufferId, GemmEpilogue, GemmStep};
use cudarc::cublaslt::{result as lt, sys};
use kiln_ir::DType;
use std::ffi::c_void;

fn blas(what: &str) -> impl Fn(lt::CublasError) -> CudaError + '_ {
    move |e| CudaError::Library(format!("cuBLASLt {what}: {e:?}"))
}

/// Checks that cuBLASLt can be loaded, without calling into it (cudarc panics otherwise).
pub fn probe_cublaslt() -> Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: only tries to open the library by the names cudarc would use.
    let present = unsafe { sys::is_culib_present() };
    if present {
        Ok(())
    } else {
        Err(CudaError::Library(
            "cuBLASLt (libcublasLt.so) was not found: install the CUDA toolkit's cuBLAS and put its lib \
             directory on LD_LIBRARY_PATH, or run with --device cpu"
                .into(),
        ))
    }
}

/// A cuBLASLt handle, one per execution context.
pub struct LtHandle(sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle may be used from any thread; the runtime uses each handle from one
// thread at a time (its context's).
#[allow(unsafe_code)]
unsafe impl Send for LtHandle {}

impl LtHandle {
    /// Creates a handle (after [`probe_cublaslt`]).
    pub fn new() -> Result<LtHandle> {
        probe_cublaslt()?;
        Ok(LtHandle(lt::create_handle().map_err(blas("create handle"))?))
    }
}

impl Drop for LtHandle {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: created by `LtHandle::new` and destroyed once.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

fn data_type(dt: DType) -> Result<sys::cudaDataType> {
    Ok(match dt {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        other => return Err(CudaError::Unsupported(format!("cuBLASLt GEMM of {other}"))),
    })
}

/// Alpha and beta in the GEMM's scale type.
#[derive(Clone, Copy)]
enum Scales {
    /// `CUDA_R_32F`: the float GEMMs.
    F32([f32; 2]),
    /// `CUDA_R_32I`: the i8 GEMMs.
    I32([i32; 2]),
}

impl Scales {
    /// Host pointers to alpha and beta, valid while `self` is.
    fn ptrs(&self) -> (*const c_void, *const c_void) {
        match self {
            Scales::F32(v) => ((&v[0] as *const f32).cast(), (&v[1] as *const f32).cast()),
            Scales::I32(v) => ((&v[0] as *const i32).cast(), (&v[1] as *const i32).cast()),
        }
    }
}

/// What cuBLASLt computes a step with: the operands' and the output's data types, the compute
/// type and the scales. An i8 step must meet the IMMA rules (see the module documentation).
fn types(
    step: &GemmStep,
    tf32: bool,
) -> Result<(sys::cudaDataType, sys::cudaDataType, sys::cublasComputeType_t, Scales)> {
    use sys::cublasComputeType_t as C;
    match (step.dtype, step.out_dtype) {
        (DType::I8, DType::I32) => {
            let why = if step.alpha != 1.0 || step.beta != 0.0 || step.c.is_some() {
                Some("alpha 1, beta 0 and no C")
            } else if step.epilogue != GemmEpilogue::None {
                Some("no epilogue")
            } else if step.trans_a || !step.trans_b {
                Some("A stored [m, k] and B stored [n, k]")
            } else if !step.n.is_multiple_of(4) || !step.k.is_multiple_of(4) {
                Some("n and k multiples of 4")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(CudaError::Unsupported(format!("an i8 cuBLASLt GEMM needs {why}")));
            }
            Ok((
                sys::cudaDataType::CUDA_R_8I,
                sys::cudaDataType::CUDA_R_32I,
                C::CUBLAS_COMPUTE_32I,
                Scales::I32([1, 0]),
            ))
        }
        (dt, out) if dt == out => {
            let t = data_type(dt)?;
            let compute =
                if dt == DType::F32 && tf32 { C::CUBLAS_COMPUTE_32F_FAST_TF32 } else { C::CUBLAS_COMPUTE_32F };
            Ok((t, t, compute, Scales::F32([step.alpha, step.beta])))
        }
        (dt, out) => Err(CudaError::Unsupported(format!("cuBLASLt GEMM of {dt} into {out}"))),
    }
}

/// A cuBLASLt algorithm, as [`GemmCall::algo`] gives it: valid for the GEMMs of one step.
pub type GemmAlgo = sys::cublasLtMatmulAlgo_t;

/// How many of cuBLASLt's ranked algorithms [`GemmCall::tune`] times.
pub const GEMM_TACTICS: usize = 8;

/// Timed runs of each algorithm in [`GemmCall::tune`].
pub const TACTIC_RUNS: usize = 5;

/// One GEMM step, ready to enqueue: descriptors, algorithm and device addresses.
pub struct GemmCall {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
    /// Device addresses of cuBLASLt's A (the plan's B), B (the plan's A), C and D.
    ptrs: [u64; 4],
    scales: Scales,
    workspace_bytes: usize,
}

// SAFETY: the descriptors are plain host objects owned by this call and only read after
// creation; the runtime enqueues a call from one thread at a time.
#[allow(unsafe_code)]
unsafe impl Send for GemmCall {}

impl GemmCall {
    /// Prepares `step` with buffer addresses from `addr`, choosing the algorithm by cuBLASLt's
    /// heuristic within `workspace_bytes`. FP32 GEMMs use TF32 tensor cores when `tf32`; i8
    /// GEMMs compute in i32 (see the module documentation for what they must meet).
    pub fn new(
        h: &LtHandle,
        step: &GemmStep,
        addr: &dyn Fn(BufferId) -> u64,
        tf32: bool,
        workspace_bytes: usize,
    ) -> Result<GemmCall> {
        let (dt, out_dt, compute, scales) = types(step, tf32)?;
        let ptrs = [addr(step.b), addr(step.a), step.c.map_or(0, addr), addr(step.d)];
        if let (Scales::I32(_), Some(p)) = (scales, ptrs.iter().find(|&&p| p % 4 != 0)) {
            return Err(CudaError::Invalid(format!("an i8 cuBLASLt GEMM needs 4-byte aligned operands, not {p:#x}")));
        }
        let scale_type = match scales {
            Scales::F32(_) => sys::cudaDataType::CUDA_R_32F,
            Scales::I32(_) => sys::cudaDataType::CUDA_R_32I,
        };
        let desc = lt::create_matmul_desc(compute, scale_type).map_err(blas("matmul desc"))?;
        let mut call = GemmCall {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            ptrs,
            scales,
            workspace_bytes,
        };
        // A batch over a shared B with A and D packed is one GEMM of `batch * m` rows: one
        // large product instead of many small ones (a linear layer over [batch, seq, hidden]).
        let [sa, sb, sd] = step.batch_strides.map(|s| s as i64);
        let (mm, nn, kk) = (step.m as i64, step.n as i64, step.k as i64);
        let fold = step.batch > 1 && sb == 0 && !step.trans_a && sa == mm * kk && sd == mm * nn;
        let (batch, m) = if fold { (1, step.m * step.batch) } else { (step.batch, step.m) };
        let (m, n, k) = (m as u64, step.n as u64, step.k as u64);
        let op = |t: bool| {
            if t {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        // cuBLASLt's A is the plan's B: stored [n, k] row-major (col-major [k, n]) when
        // trans_b, else [k, n] row-major (col-major [n, k]).
        let a = if step.trans_b { (k, n, k) } else { (n, k, n) };
        let b = if step.trans_a { (m, k, m) } else { (k, m, k) };
        // cuBLASLt's A is the plan's B and its B the plan's A, so their batch strides swap too.
        let layouts = [(dt, a, sb), (dt, b, sa), (out_dt, (n, m, n), sd)];
        for (i, (t, (rows, cols, ld), stride)) in layouts.into_iter().enumerate() {
            let l = lt::create_matrix_layout(t, rows, cols, ld as i64).map_err(blas("matrix layout"))?;
            call.layouts[i] = l;
            if batch > 1 {
                call.layout_attr(
                    i,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &(batch as i32),
                )?;
                call.layout_attr(
                    i,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    &stride,
                )?;
            }
        }
        use sys::cublasLtMatmulDescAttributes_t as D;
        call.desc_attr(D::CUBLASLT_MATMUL_DESC_TRANSA, &op(step.trans_b))?;
        call.desc_attr(D::CUBLASLT_MATMUL_DESC_TRANSB, &op(step.trans_a))?;
        use sys::cublasLtEpilogue_t as E;
        let (epi, bias) = match step.epilogue {
            GemmEpilogue::None => (E::CUBLASLT_EPILOGUE_DEFAULT, None),
            GemmEpilogue::Bias(b) => (E::CUBLASLT_EPILOGUE_BIAS, Some(b)),
            GemmEpilogue::Relu => (E::CUBLASLT_EPILOGUE_RELU, None),
            GemmEpilogue::ReluBias(b) => (E::CUBLASLT_EPILOGUE_RELU_BIAS, Some(b)),
            GemmEpilogue::Gelu => (E::CUBLASLT_EPILOGUE_GELU, None),
            GemmEpilogue::GeluBias(b) => (E::CUBLASLT_EPILOGUE_GELU_BIAS, Some(b)),
        };
        call.desc_attr(D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi)?;
        if let Some(b) = bias {
            call.desc_attr(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &addr(b))?;
        }
        call.algo = call.heuristic(h)?;
        Ok(call)
    }

    fn desc_attr<T>(&self, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
        #[allow(unsafe_code)]
        // SAFETY: `v` is the attribute's documented type, alive for the call, which copies it.
        unsafe { lt::set_matmul_desc_attribute(self.desc, attr, (v as *const T).cast(), std::mem::size_of::<T>()) }
            .map_err(blas("matmul attribute"))
    }

    fn layout_attr<T>(&self, i: usize, attr: sys::cublasLtMatrixLayoutAttribute_t, v: &T) -> Result<()> {
        #[allow(unsafe_code)]
        // SAFETY: as for `desc_attr`.
        unsafe {
            lt::set_matrix_layout_attribute(self.layouts[i], attr, (v as *const T).cast(), std::mem::size_of::<T>())
        }
        .map_err(blas("layout attribute"))
    }

    /// The algorithm this call runs.
    pub fn algo(&self) -> GemmAlgo {
        self.algo
    }

    /// Runs `algo`, chosen for the same step by another context's [`GemmCall::tune`].
    pub fn set_algo(&mut self, algo: GemmAlgo) {
        self.algo = algo;
    }

    /// Times the first [`GEMM_TACTICS`] algorithms of cuBLASLt's ranking on this call's own
    /// buffers (a warm-up run, then [`TACTIC_RUNS`] timed ones each) and keeps the fastest, as
    /// TensorRT's tactic selection does: the ranking's first choice is often not the fastest
    /// for the small products of batch-1 inference. Only before the context runs anything: D
    /// and the workspace are overwritten. An algorithm that fails to launch is skipped.
    pub fn tune(&mut self, h: &LtHandle, stream: &cudarc::driver::CudaStream, workspace: u64) -> Result<()> {
        let algos = self.heuristics(h, GEMM_TACTICS)?;
        if algos.len() < 2 {
            return Ok(());
        }
        let drv = |e: cudarc::driver::DriverError| CudaError::Library(format!("timing a GEMM tactic: {e}"));
        let ctx = stream.context();
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (ctx.new_event(flags).map_err(drv)?, ctx.new_event(flags).map_err(drv)?);
        let mut best: Option<(f32, sys::cublasLtMatmulAlgo_t)> = None;
        for algo in algos {
            self.algo = algo;
            if self.enqueue(h, stream, workspace).is_err() {
                continue;
            }
            start.record(stream).map_err(drv)?;
            let ran = (0..TACTIC_RUNS).try_for_each(|_| self.enqueue(h, stream, workspace));
            end.record(stream).map_err(drv)?;
            let ms = start.elapsed_ms(&end).map_err(drv)?;
            if ran.is_ok() && best.is_none_or(|(b, _)| ms < b) {
                best = Some((ms, algo));
            }
        }
        stream.synchronize().map_err(drv)?;
        match best {
            Some((_, algo)) => {
                self.algo = algo;
                Ok(())
            }
            None => Err(CudaError::Library("cuBLASLt: no algorithm of the ranking ran".into())),
        }
    }

    /// The first `n` algorithms of cuBLASLt's ranking that fit the workspace.
    fn heuristics(&self, h: &LtHandle, n: usize) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        let pref = lt::create_matmul_pref().map_err(blas("preference"))?;
        #[allow(unsafe_code)]
        // SAFETY: an all-zero result is a valid value of its plain C fields; cuBLASLt writes at
        // most `n` of them and says how many. Every descriptor is live and owned by `self`; the
        // preference is destroyed once, after use.
        let found = unsafe {
            let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = vec![std::mem::zeroed(); n];
            let mut count: std::ffi::c_int = 0;
            let ws = self.workspace_bytes as u64;
            let r = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                8,
            )
            .and_then(|()| {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    h.0,
                    self.desc,
                    self.layouts[0],
                    self.layouts[1],
                    self.layouts[2],
                    self.layouts[2],
                    pref,
                    n as std::ffi::c_int,
                    results.as_mut_ptr(),
                    &mut count,
                )
                .result()
            });
            let _ = lt::destroy_matmul_pref(pref);
            r.map(|()| {
                results.truncate(count.max(0) as usize);
                results
            })
        };
        let ok = sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
        Ok(found.map_err(blas("algorithm ranking"))?.into_iter().filter(|r| r.state == ok).map(|r| r.algo).collect())
    }

    fn heuristic(&self, h: &LtHandle) -> Result<sys::cublasLtMatmulAlgo_t> {
        self.heuristics(h, 1)?
            .into_iter()
            .next()
            .ok_or_else(|| CudaError::Library("cuBLASLt no algorithm for this GEMM".into()))
    }

    /// Enqueues the GEMM on `stream`, with `workspace` (at least the bytes given to `new`).
    pub fn enqueue(&self, h: &LtHandle, stream: &cudarc::driver::CudaStream, workspace: u64) -> Result<()> {
        let [a, b, c, d] = self.ptrs;
        let c = if c == 0 { d } else { c };
        let (alpha, beta) = self.scales.ptrs();
        #[allow(unsafe_code)]
        // SAFETY: the descriptors match the buffers, whose addresses were fixed when the call was
        // made and which the context keeps alive; alpha and beta are of the descriptor's scale
        // type (f32 or i32) and live in `self` for the call.
        unsafe {
            lt::matmul(
                h.0,
                self.desc,
                alpha,
                beta,
                a as *const c_void,
                self.layouts[0],
                b as *const c_void,
                self.layouts[1],
                c as *const c_void,
                self.layouts[2],
                d as *mut c_void,
                self.layouts[2],
                &self.algo,
                workspace as *mut c_void,
                self.workspace_bytes,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(blas("matmul"))
    }
}

impl Drop for GemmCall {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: each descriptor was created once by `new` and is destroyed once here.
        unsafe {
            for l in self.layouts {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}
