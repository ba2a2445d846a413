//! Convolution steps through cuDNN's convolution API.
//!
//! A [`ConvStep`] is NCHW (1-, 2- or 3-D; a 1-D convolution is given to cuDNN as 2-D with a
//! height of 1, since its descriptors take at least four dims). With a bias, a residual or a
//! ReLU the call is `cudnnConvolutionBiasActivationForward`; a plain convolution is
//! `cudnnConvolutionForward`. The algorithm is chosen once per context by cuDNN's heuristic
//! within the workspace, and the calls are recorded by CUDA graph capture like kernels.

use crate::error::{CudaError, Result};
use crate::plan::{BufferId, ConvActivation, ConvStep};
use cudarc::cudnn::{result as dnn, sys};
use kiln_ir::DType;
use std::ffi::{c_int, c_void};

fn lib(what: &str) -> impl Fn(dnn::CudnnError) -> CudaError + '_ {
    move |e| CudaError::Library(format!("cuDNN {what}: {e:?}"))
}

/// Checks that cuDNN can be loaded, without calling into it (cudarc panics otherwise).
pub fn probe_cudnn() -> Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: only tries to open the library by the names cudarc would use.
    let present = unsafe { sys::is_culib_present() };
    if present {
        Ok(())
    } else {
        Err(CudaError::Library(
            "cuDNN (libcudnn.so) was not found: install cuDNN 9 and put a libcudnn.so on LD_LIBRARY_PATH, \
             or run with --device cpu"
                .into(),
        ))
    }
}

/// A cuDNN handle bound to one stream, one per execution context.
pub struct DnnHandle(sys::cudnnHandle_t);

// SAFETY: a cuDNN handle may move between threads; the runtime uses each from one thread at a
// time (its context's).
#[allow(unsafe_code)]
unsafe impl Send for DnnHandle {}

impl DnnHandle {
    /// Creates a handle that enqueues on `stream`.
    pub fn new(stream: &cudarc::driver::CudaStream) -> Result<DnnHandle> {
        probe_cudnn()?;
        let h = DnnHandle(dnn::create_handle().map_err(lib("create handle"))?);
        #[allow(unsafe_code)]
        // SAFETY: the handle was just created; the stream belongs to the caller's context and
        // outlives the handle.
        unsafe { dnn::set_stream(h.0, stream.cu_stream() as sys::cudaStream_t) }.map_err(lib("set stream"))?;
        Ok(h)
    }
}

impl Drop for DnnHandle {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { dnn::destroy_handle(self.0) };
    }
}

fn data_type(dt: DType) -> Result<sys::cudnnDataType_t> {
    Ok(match dt {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        other => return Err(CudaError::Unsupported(format!("cuDNN convolution of {other}"))),
    })
}

fn packed_strides(dims: &[c_int]) -> Vec<c_int> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// The strides of `[n, c, h, w]` stored as NHWC.
fn nhwc_strides(dims: &[c_int]) -> Vec<c_int> {
    let (c, h, w) = (dims[1], dims[2], dims[3]);
    vec![h * w * c, 1, w * c, c]
}

fn ints(v: &[usize]) -> Result<Vec<c_int>> {
    v.iter()
        .map(|&d| c_int::try_from(d).map_err(|_| CudaError::Unsupported(format!("dim {d} is too large for cuDNN"))))
        .collect()
}

/// One convolution step, ready to enqueue.
pub struct ConvCall {
    x_desc: sys::cudnnTensorDescriptor_t,
    y_desc: sys::cudnnTensorDescriptor_t,
    bias_desc: sys::cudnnTensorDescriptor_t,
    w_desc: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
    act: sys::cudnnActivationDescriptor_t,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    /// x, w, bias (0: none), z (0: none), y.
    ptrs: [u64; 5],
    fused: bool,
    /// Whether bias and z are added by `cudnnAddTensor` after a plain convolution (an identity
    /// epilogue whose fused form does not fit the workspace).
    add_after: bool,
    workspace_bytes: usize,
}

// SAFETY: the descriptors are host objects owned by the call and only read after creation;
// the runtime enqueues a call from one thread at a time.
#[allow(unsafe_code)]
unsafe impl Send for ConvCall {}

impl ConvCall {
    /// Prepares `step`; `zero_bias` is the address of at least `k` zeros of the step's dtype,
    /// used when a residual or ReLU must be fused without a bias (cuDNN's fused call needs one).
    /// FP32 convolutions may use TF32 tensor cores when `tf32`. With `autotune` (the
    /// workspace's address), every algorithm is timed on the step's own buffers
    /// (`cudnnFindConvolutionForwardAlgorithmEx`, which overwrites the output) and the fastest
    /// that fits is kept; otherwise cuDNN's heuristic ranking decides.
    pub fn new(
        h: &DnnHandle,
        step: &ConvStep,
        addr: &dyn Fn(BufferId) -> u64,
        zero_bias: u64,
        tf32: bool,
        workspace_bytes: usize,
        autotune: Option<u64>,
    ) -> Result<ConvCall> {
        let dt = data_type(step.dtype)?;
        let nsp = step.pads.len();
        if nsp == 0 || nsp > 3 || step.x_shape.len() != nsp + 2 || step.w_shape.len() != nsp + 2 {
            return Err(CudaError::Unsupported(format!("a {nsp}-D convolution of {:?}", step.x_shape)));
        }
        // A 1-D convolution as 2-D with a unit height.
        let lift = |v: &[usize], fill: usize| -> Vec<usize> {
            if nsp == 1 {
                let mut w = v[..v.len() - 1].to_vec();
                w.push(fill);
                w.push(v[v.len() - 1]);
                w
            } else {
                v.to_vec()
            }
        };
        let x = ints(&lift(&step.x_shape, 1))?;
        let w = ints(&lift(&step.w_shape, 1))?;
        let y = ints(&lift(&step.y_shape, 1))?;
        let spatial = |v: &[usize], fill: usize| if nsp == 1 { vec![fill, v[0]] } else { v.to_vec() };
        let pads = ints(&spatial(&step.pads, 0))?;
        let strides = ints(&spatial(&step.strides, 1))?;
        let dil = ints(&spatial(&step.dilations, 1))?;
        if step.channels_last && x.len() != 4 {
            return Err(CudaError::Unsupported(format!("a channels-last convolution of {:?}", step.x_shape)));
        }
        let strides_of = |d: &[c_int]| if step.channels_last { nhwc_strides(d) } else { packed_strides(d) };
        let (x_strides, y_strides) = (strides_of(&x), strides_of(&y));
        let filter_format = if step.channels_last {
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC
        } else {
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW
        };
        let k = w[0];
        let mut bias_dims = vec![1; x.len()];
        bias_dims[1] = k;
        let mut call = ConvCall {
            x_desc: dnn::create_tensor_descriptor().map_err(lib("tensor descriptor"))?,
            y_desc: dnn::create_tensor_descriptor().map_err(lib("tensor descriptor"))?,
            bias_desc: dnn::create_tensor_descriptor().map_err(lib("tensor descriptor"))?,
            w_desc: dnn::create_filter_descriptor().map_err(lib("filter descriptor"))?,
            conv: dnn::create_convolution_descriptor().map_err(lib("convolution descriptor"))?,
            act: dnn::create_activation_descriptor().map_err(lib("activation descriptor"))?,
            algo: sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            ptrs: [addr(step.x), addr(step.w), step.bias.map_or(0, addr), step.z.map_or(0, addr), addr(step.y)],
            fused: step.bias.is_some() || step.z.is_some() || step.activation == ConvActivation::Relu,
            add_after: false,
            workspace_bytes,
        };
        if call.fused && call.ptrs[2] == 0 {
            call.ptrs[2] = zero_bias;
        }
        // An f32 convolution kept channels-last is one an FP16 network keeps in f32 for its
        // precision (see `plan::channels_last`): full f32, never TF32.
        let math = if step.dtype == DType::F32 && (!tf32 || step.channels_last) {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
        };
        let mode = match step.activation {
            ConvActivation::Identity => sys::cudnnActivationMode_t::CUDNN_ACTIVATION_IDENTITY,
            ConvActivation::Relu => sys::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
        };
        let groups = c_int::try_from(step.groups).map_err(|_| CudaError::Unsupported("too many groups".into()))?;
        #[allow(unsafe_code)]
        // SAFETY: every descriptor was just created and is owned by `call`; the dim arrays are
        // live for each call, which copies them.
        unsafe {
            dnn::set_tensornd_descriptor(call.x_desc, dt, x.len() as c_int, x.as_ptr(), x_strides.as_ptr())
                .map_err(lib("input descriptor"))?;
            dnn::set_tensornd_descriptor(call.y_desc, dt, y.len() as c_int, y.as_ptr(), y_strides.as_ptr())
                .map_err(lib("output descriptor"))?;
            dnn::set_tensornd_descriptor(
                call.bias_desc,
                dt,
                bias_dims.len() as c_int,
                bias_dims.as_ptr(),
                packed_strides(&bias_dims).as_ptr(),
            )
            .map_err(lib("bias descriptor"))?;
            dnn::set_filternd_descriptor(call.w_desc, dt, filter_format, w.len() as c_int, w.as_ptr())
                .map_err(lib("filter descriptor"))?;
            dnn::set_convolutionnd_descriptor(
                call.conv,
                pads.len() as c_int,
                pads.as_ptr(),
                strides.as_ptr(),
                dil.as_ptr(),
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .map_err(lib("convolution descriptor"))?;
            dnn::set_convolution_math_type(call.conv, math).map_err(lib("math type"))?;
            dnn::set_convolution_group_count(call.conv, groups).map_err(lib("group count"))?;
            dnn::set_activation_descriptor(call.act, mode, sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN, 0.0)
                .map_err(lib("activation descriptor"))?;
        }
        // The fused call with an identity activation supports only IMPLICIT_PRECOMP_GEMM; where
        // its workspace does not fit, convolve plainly and add bias and residual afterwards.
        if call.fused && step.activation == ConvActivation::Identity {
            let precomp = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
            #[allow(unsafe_code)]
            // SAFETY: the descriptors are live and describe this convolution.
            let need = unsafe {
                dnn::get_convolution_forward_workspace_size(
                    h.0,
                    call.x_desc,
                    call.w_desc,
                    call.conv,
                    call.y_desc,
                    precomp,
                )
            };
            match need {
                Ok(n) if n <= workspace_bytes => {
                    call.algo = precomp;
                    return Ok(call);
                }
                _ => {
                    call.fused = false;
                    call.add_after = true;
                }
            }
        }
        call.algo = match autotune {
            Some(ws) => call.find(h, ws, (tf32 && !step.channels_last) || step.dtype != DType::F32)?,
            None => call.choose(h)?,
        };
        Ok(call)
    }

    /// The fastest algorithm, timed on the real buffers, that fits the workspace; with
    /// `tensor_ops` false, only FMA-math results count (FP32 without TF32).
    fn find(&self, h: &DnnHandle, workspace: u64, tensor_ops: bool) -> Result<sys::cudnnConvolutionFwdAlgo_t> {
        const N: usize = 16;
        #[allow(unsafe_code)]
        // SAFETY: an all-zero perf struct is a valid value of its plain C fields.
        let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; N] = unsafe { std::mem::zeroed() };
        let mut count: c_int = 0;
        let [x, w, _, _, y] = self.ptrs;
        #[allow(unsafe_code)]
        // SAFETY: the descriptors describe x, w and y, which are live device buffers of those
        // shapes in the context's arena and the weights; y and the workspace may be clobbered
        // (nothing is running on this context yet).
        unsafe {
            sys::cudnnFindConvolutionForwardAlgorithmEx(
                h.0,
                self.x_desc,
                x as *const c_void,
                self.w_desc,
                w as *const c_void,
                self.conv,
                self.y_desc,
                y as *mut c_void,
                N as c_int,
                &mut count,
                perf.as_mut_ptr(),
                workspace as *mut c_void,
                self.workspace_bytes,
            )
            .result()
        }
        .map_err(lib("algorithm search"))?;
        let ok = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
        let fma = sys::cudnnMathType_t::CUDNN_FMA_MATH;
        let best = perf[..(count.max(0) as usize).min(N)]
            .iter()
            .filter(|p| p.status == ok && p.memory <= self.workspace_bytes)
            .find(|p| tensor_ops || p.mathType == fma || p.mathType == sys::cudnnMathType_t::CUDNN_DEFAULT_MATH);
        match best {
            Some(p) => {
                #[allow(unsafe_code)]
                // SAFETY: the convolution descriptor is live and owned by `self`.
                unsafe { dnn::set_convolution_math_type(self.conv, p.mathType) }.map_err(lib("math type"))?;
                Ok(p.algo)
            }
            None => self.choose(h),
        }
    }

    /// The first algorithm of cuDNN's ranking that fits the workspace.
    fn choose(&self, h: &DnnHandle) -> Result<sys::cudnnConvolutionFwdAlgo_t> {
        const N: usize = 8;
        #[allow(unsafe_code)]
        // SAFETY: an all-zero perf struct is a valid value of its plain C fields; cuDNN writes
        // at most N of them and says how many.
        let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; N] = unsafe { std::mem::zeroed() };
        let mut count: c_int = 0;
        #[allow(unsafe_code)]
        // SAFETY: the descriptors are live and describe this convolution.
        unsafe {
            dnn::get_convolution_forward_algorithm(
                h.0,
                self.x_desc,
                self.w_desc,
                self.conv,
                self.y_desc,
                N as c_int,
                &mut count,
                perf.as_mut_ptr(),
            )
        }
        .map_err(lib("algorithm heuristic"))?;
        let ok = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
        perf[..(count.max(0) as usize).min(N)]
            .iter()
            .find(|p| p.status == ok && p.memory <= self.workspace_bytes)
            .map(|p| p.algo)
            .ok_or_else(|| {
                CudaError::Library(format!(
                    "cuDNN has no convolution algorithm for this shape within a {} byte workspace",
                    self.workspace_bytes
                ))
            })
    }

    /// Enqueues the convolution on the handle's stream.
    pub fn enqueue(&self, h: &DnnHandle, workspace: u64) -> Result<()> {
        let (one, zero) = (1.0f32, 0.0f32);
        let [x, w, bias, z, y] = self.ptrs;
        let ptr = |p: u64| p as *const c_void;
        #[allow(unsafe_code)]
        // SAFETY: the descriptors describe the buffers, which the context keeps alive at fixed
        // addresses; alpha values are f32 as cuDNN wants for float, half and bfloat16 data.
        unsafe {
            if self.fused {
                // alpha2 scales z; with no residual, z aliases y with alpha2 0.
                let (zp, alpha2) = if z == 0 { (y, zero) } else { (z, one) };
                dnn::convolution_bias_activation_forward(
                    h.0,
                    (&one as *const f32).cast(),
                    self.x_desc,
                    ptr(x),
                    self.w_desc,
                    ptr(w),
                    self.conv,
                    self.algo,
                    workspace as *mut c_void,
                    self.workspace_bytes,
                    (&alpha2 as *const f32).cast(),
                    self.y_desc,
                    ptr(zp),
                    self.bias_desc,
                    ptr(bias),
                    self.act,
                    self.y_desc,
                    y as *mut c_void,
                )
            } else {
                let done = dnn::convolution_forward(
                    h.0,
                    (&one as *const f32).cast(),
                    self.x_desc,
                    ptr(x),
                    self.w_desc,
                    ptr(w),
                    self.conv,
                    self.algo,
                    workspace as *mut c_void,
                    self.workspace_bytes,
                    (&zero as *const f32).cast(),
                    self.y_desc,
                    y as *mut c_void,
                );
                // y += bias (broadcast per channel), then y += z.
                let add = |desc: sys::cudnnTensorDescriptor_t, p: u64| {
                    sys::cudnnAddTensor(
                        h.0,
                        (&one as *const f32).cast(),
                        desc,
                        ptr(p),
                        (&one as *const f32).cast(),
                        self.y_desc,
                        y as *mut c_void,
                    )
                    .result()
                };
                done.and_then(|()| if self.add_after && bias != 0 { add(self.bias_desc, bias) } else { Ok(()) })
                    .and_then(|()| if self.add_after && z != 0 { add(self.y_desc, z) } else { Ok(()) })
            }
        }
        .map_err(lib("convolution"))
    }
}

impl Drop for ConvCall {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: each descriptor was created once by `new` and is destroyed once here.
        unsafe {
            let _ = dnn::destroy_tensor_descriptor(self.x_desc);
            let _ = dnn::destroy_tensor_descriptor(self.y_desc);
            let _ = dnn::destroy_tensor_descriptor(self.bias_desc);
            let _ = dnn::destroy_filter_descriptor(self.w_desc);
            let _ = dnn::destroy_convolution_descriptor(self.conv);
            let _ = sys::cudnnDestroyActivationDescriptor(self.act);
        }
    }
}
