//! Channels-last (NHWC) execution of FP16 convolution networks.
//!
//! cuDNN's tensor-core convolutions work on NHWC tensors; handed NCHW ones they transpose on
//! every call. So a 2-D convolution in f16 or bf16 runs channels-last: its input is read NHWC,
//! its filter is stored OHWI, and its output is kept NHWC. The ops that follow stay
//! channels-last while they can: convolutions, elementwise ops and their fusions (the other
//! operands are read with permuted strides), and pooling. A ResNet thus runs NHWC from its
//! first convolution to its global pooling, whose `[N, C]` result is the same memory in both
//! layouts.
//!
//! A value kept channels-last has a buffer of the physical shape `[N, H, W, C]` in
//! `Planner::nhwc`, and no NCHW buffer until an op that needs NCHW reads it; then one permute
//! step makes it ([`Planner::materialize`]), once. The same holds for graph outputs.

use super::*;
use kiln_ir::ops::pool::PoolOp;

/// NCHW dims to NHWC.
pub(super) const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// NHWC dims to NCHW.
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// `shape` with its dims taken in the order `perm` gives.
fn permuted<T: Copy>(shape: &[T], perm: &[usize]) -> Vec<T> {
    perm.iter().map(|&p| shape[p]).collect()
}

/// The strides of an NCHW-shaped tensor stored channels-last, over its logical dims.
fn nhwc_strides(shape: &[usize]) -> Vec<i64> {
    let (c, h, w) = (shape[1] as i64, shape[2] as i64, shape[3] as i64);
    vec![h * w * c, 1, w * c, c]
}

/// A filter `[k, c, r, s]` stored as `[k, r, s, c]` (cuDNN's NHWC filter format).
pub(super) fn ohwi(t: &Tensor) -> Result<Tensor> {
    let [k, c, r, s] = t.shape() else {
        return Err(CudaError::Invalid(format!("a filter of shape {:?} is not 4-D", t.shape())));
    };
    let (k, c, r, s) = (*k, *c, *r, *s);
    let size = t.dtype().size();
    let src = crate::host::tensor_bytes(t)?;
    let mut dst = vec![0u8; src.len()];
    for o in 0..k {
        for i in 0..c {
            for y in 0..r {
                for x in 0..s {
                    let from = (((o * c + i) * r + y) * s + x) * size;
                    let to = (((o * r + y) * s + x) * c + i) * size;
                    dst[to..to + size].copy_from_slice(&src[from..from + size]);
                }
            }
        }
    }
    crate::host::tensor_from_bytes(t.dtype(), &[k, r, s, c], &dst)
}

/// Whether `g` has a 2-D convolution over f16 or bf16: an FP16 network. Its f32 convolutions
/// (the first layers, which the FP16 policy keeps in f32) then run channels-last as well, on
/// TF32 tensor cores where allowed, so the network is NHWC from its first convolution.
pub(super) fn half_convolutions(g: &Graph) -> bool {
    g.node_ids().any(|id| {
        let conv = matches!(
            &g.node(id).op,
            Op::Linalg(LinalgOp::Conv(_)) | Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(_), .. })
        );
        conv && g.inputs_of(id).first().copied().flatten().is_some_and(|v| {
            let ty = &g.value_info(v).ty;
            matches!(ty.dtype, Some(DType::F16 | DType::BF16)) && ty.shape.as_ref().is_some_and(|s| s.len() == 4)
        })
    })
}

impl Planner<'_> {
    /// Whether a convolution of an input of `shape` in `dtype` runs channels-last.
    pub(super) fn channels_last_conv(&self, shape: &[usize], dtype: DType) -> bool {
        shape.len() == 4 && (matches!(dtype, DType::F16 | DType::BF16) || (dtype == DType::F32 && self.nhwc_f32))
    }

    /// The static type of input `slot` of `id`.
    pub(super) fn input_type(&self, id: NodeId, slot: usize) -> Option<(DType, Vec<usize>)> {
        let v = self.g.inputs_of(id).get(slot).copied().flatten()?;
        let ty = &self.g.value_info(v).ty;
        Some((ty.dtype?, ty.concrete_shape()?))
    }

    /// Whether input `slot` of `id` is kept channels-last.
    pub(super) fn is_nhwc(&self, id: NodeId, slot: usize) -> bool {
        self.g.inputs_of(id).get(slot).copied().flatten().is_some_and(|v| self.nhwc.contains_key(&v))
    }

    /// Lowers `id` channels-last if it can and one of its inputs is kept so (or it is a
    /// convolution that runs so); returns whether it did.
    pub(super) fn channels_last(&mut self, id: NodeId) -> Result<bool> {
        let node = self.g.node(id);
        match &node.op {
            Op::Linalg(LinalgOp::Conv(attrs)) => match self.input_type(id, 0) {
                Some((dt, xs)) if self.channels_last_conv(&xs, dt) => {
                    self.conv(id, attrs, node.num_inputs, None, true)?;
                    Ok(true)
                }
                _ => Ok(false),
            },
            Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(attrs), base_inputs, expr }) => {
                match self.input_type(id, 0) {
                    Some((dt, xs)) if self.channels_last_conv(&xs, dt) => {
                        self.conv(id, attrs, *base_inputs, Some(expr), true)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            Op::Fused(FusedOp::Epilogue { base: LinalgOp::ConvInteger(attrs), base_inputs, expr }) => {
                self.igemm_conv(id, attrs, *base_inputs, expr)
            }
            Op::Elementwise(e) if !matches!(e, ElementwiseOp::CastLike { .. }) => {
                let expr = Expr::op(e.clone(), node.num_inputs);
                if expr.check().is_err() {
                    return Ok(false);
                }
                self.elementwise_nhwc(id, &expr)
            }
            Op::Fused(FusedOp::Elementwise(expr)) => self.elementwise_nhwc(id, expr),
            Op::Pool(p @ (PoolOp::MaxPool { .. } | PoolOp::AveragePool { .. })) if self.is_nhwc(id, 0) => {
                if node.outputs.get(1).is_some_and(|o| !o.name.is_empty()) {
                    return Ok(false);
                }
                self.pool_nhwc(id, p)
            }
            Op::Pool(PoolOp::GlobalAveragePool) if self.is_nhwc(id, 0) => self.global_pool_nhwc(id, "globalavgpool"),
            Op::Pool(PoolOp::GlobalMaxPool) if self.is_nhwc(id, 0) => self.global_pool_nhwc(id, "globalmaxpool"),
            _ => Ok(false),
        }
    }

    /// Gives every input of `id` that is kept only channels-last its NCHW buffer.
    pub(super) fn materialize_inputs(&mut self, id: NodeId) -> Result<()> {
        for v in self.g.inputs_of(id).into_iter().flatten() {
            self.materialize(v)?;
        }
        Ok(())
    }

    /// The NCHW buffer of a value kept only channels-last: a permute step after its producer.
    pub(super) fn materialize(&mut self, v: Value) -> Result<()> {
        if self.values.contains_key(&v) {
            return Ok(());
        }
        let Some(&x) = self.nhwc.get(&v) else { return Ok(()) };
        let y = self.buffer(v, BufferKind::Temp)?;
        self.permute(v.node, x, y, &TO_NCHW)
    }

    /// The channels-last buffer of input `slot` of `id`: its own, or a permuted copy of its
    /// NCHW buffer (kept for other readers).
    pub(super) fn nhwc_input(&mut self, id: NodeId, slot: usize) -> Result<BufferId> {
        let v = self.g.inputs_of(id).get(slot).copied().flatten();
        let v = v.ok_or_else(|| CudaError::Invalid(format!("input {slot} is missing")))?;
        if let Some(&b) = self.nhwc.get(&v) {
            return Ok(b);
        }
        let x = self.required(id, slot)?;
        let b = &self.plan.buffers[x];
        if b.shape.len() != 4 {
            return Err(CudaError::Invalid(format!("a channels-last copy of {:?}", b.shape)));
        }
        let (name, dtype, shape) = (format!("{}.nhwc", b.name), b.dtype, permuted(&b.shape, &TO_NHWC));
        let y = self.temp(name, dtype, shape);
        self.permute(v.node, x, y, &TO_NHWC)?;
        self.nhwc.insert(v, y);
        Ok(y)
    }

    /// A channels-last buffer for output `slot` of `id`.
    pub(super) fn nhwc_out(&mut self, id: NodeId, slot: usize) -> Result<BufferId> {
        let v = Value { node: id, slot };
        let info = self.g.value_info(v);
        let (Some(dtype), Some(shape)) = (info.ty.dtype, info.ty.concrete_shape()) else {
            return Err(CudaError::Unsupported(format!("value {} has no static type ({})", info.name, info.ty)));
        };
        if shape.len() != 4 {
            return Err(CudaError::Invalid(format!("a channels-last output of shape {shape:?}")));
        }
        let b = self.temp(format!("{}.nhwc", info.name), dtype, permuted(&shape, &TO_NHWC));
        self.nhwc.insert(v, b);
        Ok(b)
    }

    /// The filter input of convolution `id`, stored for a channels-last convolution (OHWI):
    /// rewritten in place where the convolution is its only reader, else a copy.
    pub(super) fn nhwc_filter(&mut self, id: NodeId) -> Result<BufferId> {
        match self.rewritten_const(id, 1, "ohwi", ohwi)? {
            Some(w) => Ok(w),
            None => {
                let w = self.required(id, 1)?;
                Err(CudaError::Unsupported(format!(
                    "a channels-last convolution with filter {} computed at run time",
                    self.plan.buffers[w].name
                )))
            }
        }
    }

    /// An operand of a channels-last elementwise kernel with output `out` (logical NCHW): the
    /// buffer and its strides over the physical output dims. An operand kept channels-last is
    /// read as it is; any other through its NCHW buffer with permuted strides.
    pub(super) fn nhwc_operand(&mut self, id: NodeId, slot: usize, out: &[usize]) -> Result<(BufferId, Vec<i64>)> {
        let (_, shape) = self
            .input_type(id, slot)
            .ok_or_else(|| CudaError::Unsupported(format!("input {slot} has no static type")))?;
        let (b, strides) = if self.is_nhwc(id, slot) {
            let b = self.nhwc_input(id, slot)?;
            // A kept value has the full shape of a convolution output: broadcast only unit dims.
            let mut s = nhwc_strides(&shape);
            for (d, (&n, &o)) in shape.iter().zip(out).enumerate() {
                if n == 1 && o != 1 {
                    s[d] = 0;
                }
            }
            (b, s)
        } else {
            let b = self.required(id, slot)?;
            (b, broadcast_strides(&self.plan.buffers[b].shape, out)?)
        };
        if strides.len() != 4 {
            return Err(CudaError::Invalid(format!("operand {slot} of shape {shape:?} for a 4-D output")));
        }
        Ok((b, permuted(&strides, &TO_NHWC)))
    }

    /// An elementwise node channels-last, if one of its inputs is kept so and has the
    /// output's shape.
    fn elementwise_nhwc(&mut self, id: NodeId, expr: &Expr) -> Result<bool> {
        let v = Value { node: id, slot: 0 };
        let Some(out_shape) = self.g.value_info(v).ty.concrete_shape() else { return Ok(false) };
        let n = self.g.node(id).num_inputs;
        let anchored =
            (0..n).any(|s| self.is_nhwc(id, s) && self.input_type(id, s).is_some_and(|(_, shape)| shape == out_shape));
        if !anchored || out_shape.len() != 4 {
            return Ok(false);
        }
        let ins = (0..n).map(|s| self.nhwc_operand(id, s, &out_shape)).collect::<Result<Vec<_>>>()?;
        let dts: Vec<DType> = ins.iter().map(|&(b, _)| self.plan.buffers[b].dtype).collect();
        let k = elementwise_kernel(expr, &dts)?;
        let out = self.nhwc_out(id, 0)?;
        self.launch_elementwise(id, k, ins, out)?;
        Ok(true)
    }

    /// MaxPool or AveragePool over 2 spatial dims of a channels-last input.
    fn pool_nhwc(&mut self, id: NodeId, p: &PoolOp) -> Result<bool> {
        let (window, max, count_include_pad) = match p {
            PoolOp::MaxPool { window, .. } => (window, true, false),
            PoolOp::AveragePool { window, count_include_pad } => (window, false, *count_include_pad),
            _ => return Ok(false),
        };
        let Some((_, xs)) = self.input_type(id, 0) else { return Ok(false) };
        let dims = window.dims(&xs[2..]).map_err(CudaError::Invalid)?;
        let [h, w] = dims[..] else { return Ok(false) };
        let x = self.nhwc_input(id, 0)?;
        let what = if max { "maxpool2d_nhwc" } else { "avgpool2d_nhwc" };
        let dt = self.plan.buffers[x].dtype;
        // MaxPool also takes 8-bit integers (an INT8 network's quantized activations).
        let sfx = if max && matches!(dt, DType::I8 | DType::U8) {
            crate::codegen::dtype_suffix(dt)?
        } else {
            self.float_suffix(x, what)?
        };
        // Where a pixel's channels come in whole 16-byte pieces, a thread takes one piece.
        let (what, per_thread) = if max && (xs[1] * dt.size()).is_multiple_of(16) {
            ("maxpool2d_nhwc16", 16 / dt.size())
        } else {
            (what, 1)
        };
        let y = self.nhwc_out(id, 0)?;
        let want = [xs[0], h.output, w.output, xs[1]];
        if self.plan.buffers[y].shape != want {
            return Err(CudaError::Invalid(format!(
                "the windows give {want:?} (NHWC), the node's output is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        let args = pool::pool_args(xs[0] * xs[1], &h, &w, count_include_pad);
        let n: usize = want.iter().product();
        let fields = args.param().0.chunks_exact(8).map(|c| Field::I64(i64::from_ne_bytes(pool::word(c)))).collect();
        let args = vec![Arg::Buffer(x), Arg::Buffer(y), Arg::Struct(fields), Arg::I64(xs[1] as i64)];
        self.kernel(
            id,
            KernelFamily::Pool,
            format!("{what}_{sfx}"),
            launch::grid_stride((n / per_thread) as u64),
            args,
        );
        Ok(true)
    }

    /// Global pooling of a channels-last input: its `[N, C]` result is plain NCHW.
    fn global_pool_nhwc(&mut self, id: NodeId, what: &str) -> Result<bool> {
        let Some((_, xs)) = self.input_type(id, 0) else { return Ok(false) };
        let x = self.nhwc_input(id, 0)?;
        let sfx = self.float_suffix(x, what)?;
        let (planes, hw) = (xs[0] * xs[1], xs[2] * xs[3]);
        if hw == 0 {
            return Err(CudaError::Unsupported("global pooling of an empty plane".into()));
        }
        let y = self.out(id, 0)?;
        let args =
            vec![Arg::Buffer(x), Arg::Buffer(y), Arg::I64(planes as i64), Arg::I64(hw as i64), Arg::I64(xs[1] as i64)];
        let kernel = format!("{what}_nhwc_{sfx}");
        self.kernel(id, KernelFamily::Pool, kernel, launch::grid_stride(planes as u64), args);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_ohwi() {
        let w = Tensor::from_vec(vec![2, 3, 1, 2], (0..12).map(|v| v as f32).collect::<Vec<_>>()).unwrap();
        let t = ohwi(&w).unwrap();
        assert_eq!(t.shape(), [2, 1, 2, 3]);
        // [k][r][s][c] = w[k][c][r][s] = k*6 + c*2 + s.
        let want: Vec<f32> = vec![0., 2., 4., 1., 3., 5., 6., 8., 10., 7., 9., 11.];
        assert_eq!(t.as_slice::<f32>().unwrap(), want);
    }

    #[test]
    fn nhwc_strides_read_a_channels_last_buffer() {
        // [n, c, h, w] = [2, 3, 4, 5] stored as [2, 4, 5, 3].
        assert_eq!(nhwc_strides(&[2, 3, 4, 5]), vec![60, 1, 15, 3]);
        assert_eq!(permuted(&[2, 3, 4, 5], &TO_NHWC), vec![2, 4, 5, 3]);
        assert_eq!(permuted(&[2, 4, 5, 3], &TO_NCHW), vec![2, 3, 4, 5]);
    }
}
