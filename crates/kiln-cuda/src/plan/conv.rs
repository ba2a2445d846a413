//! Convolutions through cuDNN: Conv and Conv epilogues, 1-D to 3-D.
//!
//! `cudnnConvolutionBiasActivationForward` computes `act(conv(x, w) + bias + z)` with `act`
//! identity or ReLU, so an epilogue of that shape (the Conv's own bias or a per-channel bias,
//! a residual of the output's shape, ReLU last) is a field of the [`ConvStep`]; any other
//! epilogue is a generated kernel on an accumulator after the convolution, as for GEMMs.
//! cuDNN pads symmetrically: an input padded more on one side is padded by the layout family's
//! pad kernel first, by the difference.

use super::*;
use kiln_ir::ops::linalg::ConvAttrs;

/// The parts of a convolution epilogue cuDNN applies: `relu?(in0 + bias + z)`, with `bias`
/// and `z` indices into the epilogue's own inputs (the node's inputs past the base's).
#[derive(Debug, PartialEq)]
struct CudnnEpilogue {
    relu: bool,
    bias: Option<usize>,
    z: Option<usize>,
}

/// Whether a tensor of `shape` broadcast to `out` (`[n, k, spatial...]`) is one value per
/// output channel.
fn per_channel(shape: &[usize], out: &[usize]) -> bool {
    if shape.len() > out.len() || out.len() < 2 {
        return false;
    }
    let lead = out.len() - shape.len();
    (0..out.len()).all(|d| {
        let dim = if d < lead { 1 } else { shape[d - lead] };
        if d == 1 {
            dim == out[1]
        } else {
            dim == 1
        }
    })
}

/// `e` with its input 0 (the accumulator) replaced by `in0 + in<bias>`; None where `e` is
/// input 0 alone with other steps after it (no epilogue planned here is).
fn with_bias(e: &Expr, bias: usize) -> Option<Expr> {
    let add = ElementwiseOp::Binary(BinaryOp::Add);
    let mut nodes = vec![ExprNode::Input(0), ExprNode::Input(bias), ExprNode::Op { op: add, args: vec![0, 1] }];
    let mut at = Vec::with_capacity(e.nodes.len());
    for n in &e.nodes {
        match n {
            ExprNode::Input(0) => at.push(2),
            ExprNode::Op { op, args } => {
                nodes.push(ExprNode::Op { op: op.clone(), args: args.iter().map(|&a| at[a]).collect() });
                at.push(nodes.len() - 1);
            }
            other => {
                nodes.push(other.clone());
                at.push(nodes.len() - 1);
            }
        }
    }
    (at.last() == Some(&(nodes.len() - 1))).then_some(Expr { nodes })
}

/// Matches an epilogue that is a sum of the accumulator, at most one per-channel bias and at
/// most one residual of the output's shape, optionally under a ReLU. `extra` holds the shape
/// and type of each epilogue input; `own_bias` says whether the Conv already has a bias (cuDNN
/// takes one).
fn cudnn_epilogue(
    e: &Expr,
    extra: &[(Vec<usize>, DType)],
    out: &[usize],
    dtype: DType,
    own_bias: bool,
) -> Option<CudnnEpilogue> {
    let nodes = &e.nodes;
    let mut root = nodes.len().checked_sub(1)?;
    let mut relu = false;
    if let ExprNode::Op { op: ElementwiseOp::Unary(UnaryOp::Relu), args } = &nodes[root] {
        relu = true;
        root = *args.first()?;
    }
    fn leaves(nodes: &[ExprNode], i: usize, out: &mut Vec<usize>) -> bool {
        match nodes.get(i) {
            Some(ExprNode::Input(k)) => {
                out.push(*k);
                true
            }
            Some(ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args }) if args.len() == 2 => {
                leaves(nodes, args[0], out) && leaves(nodes, args[1], out)
            }
            _ => false,
        }
    }
    let mut terms = vec![];
    if !leaves(nodes, root, &mut terms) || terms.iter().filter(|&&k| k == 0).count() != 1 {
        return None;
    }
    let mut f = CudnnEpilogue { relu, bias: None, z: None };
    for k in terms.into_iter().filter(|&k| k != 0) {
        let (shape, dt) = extra.get(k - 1)?;
        if *dt != dtype {
            return None;
        }
        if per_channel(shape, out) && f.bias.is_none() && !own_bias {
            f.bias = Some(k - 1);
        } else if shape.as_slice() == out && f.z.is_none() {
            f.z = Some(k - 1);
        } else {
            return None;
        }
    }
    Some(f)
}

/// The activation a generated direct convolution applies: `(act, lo, hi)` as `DwArgs` takes it.
type Activation = (i64, f64, f64);

/// Matches an epilogue `act?(in0 + bias?)` with `act` ReLU or a Clip with constant bounds and
/// at most one per-channel bias: the epilogues a direct convolution kernel fuses. Returns the
/// bias's index among the epilogue's own inputs and the activation.
fn direct_epilogue(
    e: &Expr,
    extra: &[(Vec<usize>, DType)],
    out: &[usize],
    dtype: DType,
    own_bias: bool,
) -> Option<(Option<usize>, Activation)> {
    let nodes = &e.nodes;
    let last = nodes.len().checked_sub(1)?;
    let (act, root) = match &nodes[last] {
        ExprNode::Op { op: ElementwiseOp::Unary(UnaryOp::Relu), args } if args.len() == 1 => ((1, 0.0, 0.0), args[0]),
        ExprNode::Op { op: ElementwiseOp::Clip { min: Some(lo), max: Some(hi) }, args } if args.len() == 1 => {
            ((2, f64::from(*lo), f64::from(*hi)), args[0])
        }
        _ => ((0, 0.0, 0.0), last),
    };
    let f = cudnn_epilogue(&Expr { nodes: nodes[..=root].to_vec() }, extra, out, dtype, own_bias)?;
    if f.z.is_some() || (f.relu && act.0 != 0) {
        return None;
    }
    Some((f.bias, if f.relu { (1, 0.0, 0.0) } else { act }))
}

impl Planner<'_> {
    /// A depthwise convolution of a channels-last input (`x` NHWC, `w` its OHWI filter) with a
    /// generated direct kernel, which cuDNN runs slowly in NHWC; the epilogue is fused where
    /// [`direct_epilogue`] matches it, else a generated kernel after. The kernel is the 16-byte
    /// vector one (`dwconv2d_nhwc_v8`) where [`launch::DwArgs::vector_ok`] takes the shape (3x3
    /// and smaller, strides 1 and 2, channels a multiple of 8: MobileNet's layers), else the
    /// one-element-per-thread one.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_nhwc(
        &mut self,
        id: NodeId,
        x: BufferId,
        w: BufferId,
        bias: Option<BufferId>,
        dims: &[kiln_ir::ops::pool::WindowDim],
        base_inputs: usize,
        expr: Option<&Expr>,
    ) -> Result<()> {
        let [h, wd] = dims else { return Err(CudaError::Invalid("a depthwise convolution needs 2 dims".into())) };
        let xs = self.plan.buffers[x].shape.clone();
        let (n, c) = (xs[0], xs[3]);
        let dtype = self.plan.buffers[x].dtype;
        let sfx = self.float_suffix(x, "dwconv2d_nhwc")?;
        // The filter as [kh, kw, c], so that neighbouring threads read neighbouring channels:
        // OHWI [c, kh, kw, 1] is [c][kh][kw] in memory. Only this convolution reads `w`.
        let BufferKind::Const(t) = &self.plan.buffers[w].kind else {
            return Err(CudaError::Unsupported("a depthwise filter computed at run time".into()));
        };
        let chw = t.clone().reshape(vec![1, c, h.kernel, wd.kernel]).map_err(|e| CudaError::Invalid(e.to_string()))?;
        let rsc = channels_last::ohwi(&chw)?;
        self.plan.buffers[w].shape = rsc.shape().to_vec();
        self.plan.buffers[w].kind = BufferKind::Const(rsc);
        let out = self.nhwc_out(id, 0)?;
        let y_shape = vec![n, c, h.output, wd.output];
        let slots: Vec<usize> = (base_inputs..self.g.node(id).num_inputs).collect();
        let info: Vec<(Vec<usize>, DType)> = slots
            .iter()
            .map(|&s| {
                self.input_type(id, s)
                    .map(|(dt, shape)| (shape, dt))
                    .ok_or_else(|| CudaError::Unsupported(format!("input {s} has no static type")))
            })
            .collect::<Result<_>>()?;
        let fused = match expr {
            None => Some((None, (0, 0.0, 0.0))),
            Some(e) if self.plan.buffers[out].dtype == dtype => {
                direct_epilogue(e, &info, &y_shape, dtype, bias.is_some())
            }
            Some(_) => None,
        };
        let (y, bias, act) = match fused {
            Some((extra_bias, act)) => {
                (out, bias.or(extra_bias.map(|i| self.required(id, slots[i])).transpose()?), act)
            }
            None => {
                let name = format!("{}.acc", self.g.node(id).name);
                (self.temp(name, dtype, self.plan.buffers[out].shape.clone()), bias, (0, 0.0, 0.0))
            }
        };
        let i = |v: usize| v as i64;
        let args = launch::DwArgs {
            dims: [
                i(n),
                i(c),
                i(h.input),
                i(wd.input),
                i(h.output),
                i(wd.output),
                i(h.kernel),
                i(wd.kernel),
                i(h.stride),
                i(wd.stride),
                i(h.dilation),
                i(wd.dilation),
                i(h.pad_begin),
                i(wd.pad_begin),
            ],
            act: act.0,
            lo: act.1,
            hi: act.2,
        };
        let fields = args.param().0.chunks_exact(8).map(|c| Field::I64(i64::from_ne_bytes(pool::word(c)))).collect();
        // The vector kernel where its fast path takes the shape (the plan's buffers are whole
        // allocations, 16-byte aligned; the kernel checks that too), else one thread per element.
        let size = dtype.size();
        let (name, cfg) = if args.vector_ok(size) {
            let v = launch::DwArgs::vector_width(size);
            (format!("dwconv2d_nhwc_v{v}_{sfx}"), args.vector_launch(size))
        } else {
            (format!("dwconv2d_nhwc_{sfx}"), launch::grid_stride((n * c * h.output * wd.output) as u64))
        };
        let bias_arg = bias.map_or(Arg::Null, Arg::Buffer);
        let kargs = vec![Arg::Buffer(x), Arg::Buffer(w), bias_arg, Arg::Buffer(y), Arg::Struct(fields)];
        self.kernel(id, KernelFamily::Conv, name, cfg, kargs);
        if fused.is_none() {
            let e = expr.ok_or_else(|| CudaError::Invalid("an unfused epilogue without an expression".into()))?;
            let mut dts = vec![dtype];
            dts.extend(info.iter().map(|(_, dt)| *dt));
            let k = epilogue_kernel(e, dts[0], &dts[1..])?;
            let out_phys = self.plan.buffers[out].shape.clone();
            let mut ins = vec![(y, broadcast_strides(&out_phys, &out_phys)?)];
            for &s in &slots {
                ins.push(self.nhwc_operand(id, s, &y_shape)?);
            }
            self.launch_elementwise(id, k, ins, out)?;
        }
        Ok(())
    }

    /// A convolution step, plus a generated epilogue kernel where cuDNN cannot apply the
    /// epilogue. `channels_last`: input, residual and output are NHWC and the filter OHWI (see
    /// [`super::channels_last`]); shapes in the step stay logical (NCHW).
    pub(super) fn conv(
        &mut self,
        id: NodeId,
        attrs: &ConvAttrs,
        base_inputs: usize,
        expr: Option<&Expr>,
        channels_last: bool,
    ) -> Result<()> {
        let (x, w) = if channels_last {
            (self.nhwc_input(id, 0)?, self.nhwc_filter(id)?)
        } else {
            (self.required(id, 0)?, self.required(id, 1)?)
        };
        let bias = if base_inputs > 2 { self.input(id, 2)? } else { None };
        let logical = |shape: &[usize]| -> Vec<usize> {
            if channels_last {
                vec![shape[0], shape[3], shape[1], shape[2]]
            } else {
                shape.to_vec()
            }
        };
        let (xs, ws) = (logical(&self.plan.buffers[x].shape), logical(&self.plan.buffers[w].shape));
        let dtype = self.plan.buffers[x].dtype;
        let wdt = self.plan.buffers[w].dtype;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) || wdt != dtype {
            return Err(CudaError::Unsupported(format!("cuDNN convolution of {dtype} input and {wdt} weights")));
        }
        if !(3..=5).contains(&xs.len()) || ws.len() != xs.len() {
            return Err(CudaError::Unsupported(format!(
                "convolution of a {:?} input with {:?} weights (1 to 3 spatial dims are lowered)",
                xs, ws
            )));
        }
        let groups = attrs.group.max(1);
        if xs[1] != ws[1] * groups || ws[0] % groups != 0 {
            return Err(CudaError::Invalid(format!(
                "{} input channels and weights {ws:?} do not make {groups} groups",
                xs[1]
            )));
        }
        if let Some(b) = bias {
            let bb = &self.plan.buffers[b];
            if bb.dtype != dtype || bb.shape.iter().product::<usize>() != ws[0] {
                return Err(CudaError::Unsupported(format!(
                    "a Conv bias of {}{:?} for {} output channels of {dtype}",
                    bb.dtype, bb.shape, ws[0]
                )));
            }
        }
        let dims = attrs.dims(&xs[2..], &ws[2..]).map_err(CudaError::Invalid)?;
        if channels_last && groups > 1 && groups == xs[1] && ws[0] == groups {
            return self.depthwise_nhwc(id, x, w, bias, &dims, base_inputs, expr);
        }
        // cuDNN pads both sides alike: the kernel pads by the difference first.
        let pads: Vec<usize> = dims.iter().map(|d| d.pad_begin.min(d.pad_end)).collect();
        let conv_x = if dims.iter().any(|d| d.pad_begin != d.pad_end) {
            let mut begin = vec![0i64, 0];
            let mut shape = xs[..2].to_vec();
            for (d, p) in dims.iter().zip(&pads) {
                begin.push((d.pad_begin - p) as i64);
                shape.push(d.input + d.pad_begin + d.pad_end - 2 * p);
            }
            if channels_last {
                begin = channels_last::TO_NHWC.iter().map(|&d| begin[d]).collect();
                shape = channels_last::TO_NHWC.iter().map(|&d| shape[d]).collect();
            }
            let name = format!("{}.padded", self.g.node(id).name);
            let padded = self.temp(name, dtype, shape);
            self.pad_launch(id, x, padded, &begin, 0, 0)?;
            padded
        } else {
            x
        };
        let x_shape = logical(&self.plan.buffers[conv_x].shape);
        let out = if channels_last { self.nhwc_out(id, 0)? } else { self.out(id, 0)? };
        let (out_dtype, y_shape) = (self.plan.buffers[out].dtype, logical(&self.plan.buffers[out].shape));
        let want: Vec<usize> = [xs[0], ws[0]].into_iter().chain(dims.iter().map(|d| d.output)).collect();
        if y_shape != want {
            return Err(CudaError::Invalid(format!(
                "the convolution gives {want:?}, the node's output is {y_shape:?}"
            )));
        }
        let slots: Vec<usize> = (base_inputs..self.g.node(id).num_inputs).collect();
        let info: Vec<(Vec<usize>, DType)> = slots
            .iter()
            .map(|&s| {
                let v = self.g.inputs_of(id)[s].ok_or_else(|| CudaError::Invalid(format!("input {s} is missing")))?;
                let ty = &self.g.value_info(v).ty;
                match (ty.concrete_shape(), ty.dtype) {
                    (Some(shape), Some(dt)) => Ok((shape, dt)),
                    _ => Err(CudaError::Unsupported(format!("input {s} has no static type ({ty})"))),
                }
            })
            .collect::<Result<_>>()?;
        let fused = match expr {
            None => Some(CudnnEpilogue { relu: false, bias: None, z: None }),
            Some(e) if out_dtype == dtype => cudnn_epilogue(e, &info, &y_shape, dtype, bias.is_some()),
            Some(_) => None,
        };
        let step = |y: BufferId, bias: Option<BufferId>, z: Option<BufferId>, relu: bool| ConvStep {
            x: conv_x,
            w,
            bias,
            z,
            y,
            x_shape: x_shape.clone(),
            w_shape: ws.clone(),
            y_shape: y_shape.clone(),
            pads: pads.clone(),
            strides: dims.iter().map(|d| d.stride).collect(),
            dilations: dims.iter().map(|d| d.dilation).collect(),
            groups,
            dtype,
            activation: if relu { ConvActivation::Relu } else { ConvActivation::Identity },
            channels_last,
        };
        // A 1x1 convolution of stride 1 over NHWC is a matrix product: [n*h*w, c] x [k, c]^T
        // (the OHWI filter) gives the NHWC output. cuBLASLt runs it faster than cuDNN and fuses
        // the same epilogues, save ReLU over a residual (its C): bias and ReLU, or bias and C.
        // (f16 and bf16 only: an f32 convolution here is kept f32 for precision, and cuBLASLt
        // would run it on TF32.)
        let pointwise = channels_last
            && matches!(dtype, DType::F16 | DType::BF16)
            && groups == 1
            && xs.len() == 4
            && dims.iter().all(|d| d.kernel == 1 && d.stride == 1 && d.dilation == 1 && d.pad_begin + d.pad_end == 0);
        let gemm = |y: BufferId, bias: Option<BufferId>, z: Option<BufferId>, relu: bool| GemmStep {
            a: conv_x,
            b: w,
            c: z,
            d: y,
            m: xs[0] * xs[2] * xs[3],
            n: ws[0],
            k: ws[1],
            batch: 1,
            batch_strides: [0, 0, 0],
            trans_a: false,
            trans_b: true,
            alpha: 1.0,
            beta: if z.is_some() { 1.0 } else { 0.0 },
            dtype,
            out_dtype: dtype,
            epilogue: epilogue(relu, false, bias),
        };
        match (fused, expr) {
            (Some(f), _) => {
                // A per-channel bias is the same memory in both layouts; the residual is not.
                let extra_bias = f.bias.map(|i| self.required(id, slots[i])).transpose()?;
                let z = match f.z {
                    Some(i) if channels_last => Some(self.nhwc_input(id, slots[i])?),
                    Some(i) => Some(self.required(id, slots[i])?),
                    None => None,
                };
                if pointwise && !(f.relu && z.is_some()) {
                    self.step(id, StepKind::Gemm(gemm(out, bias.or(extra_bias), z, f.relu)));
                } else {
                    let s = step(out, bias.or(extra_bias), z, f.relu);
                    self.step(id, StepKind::Conv(s));
                }
            }
            (None, Some(e)) => {
                // The convolution into an accumulator, then the epilogue. cuDNN's fused call
                // with an identity activation runs only IMPLICIT_PRECOMP_GEMM, often its
                // slowest algorithm (3x on ResNet-50's stem), so a cuDNN convolution's own
                // bias joins the epilogue instead and the convolution is a plain one.
                let name = format!("{}.acc", self.g.node(id).name);
                let acc = self.temp(name, dtype, self.plan.buffers[out].shape.clone());
                let folded = bias.filter(|_| !pointwise).and_then(|b| Some((b, with_bias(e, 1 + info.len())?)));
                let e = folded.as_ref().map_or(e, |(_, e)| e);
                if pointwise {
                    self.step(id, StepKind::Gemm(gemm(acc, bias, None, false)));
                } else {
                    let s = step(acc, if folded.is_some() { None } else { bias }, None, false);
                    self.step(id, StepKind::Conv(s));
                }
                let mut dts = vec![dtype];
                dts.extend(info.iter().map(|(_, dt)| *dt));
                if folded.is_some() {
                    dts.push(dtype);
                }
                let k = epilogue_kernel(e, dts[0], &dts[1..])?;
                let out_shape = self.plan.buffers[out].shape.clone();
                let mut ins = vec![(acc, broadcast_strides(&self.plan.buffers[acc].shape, &out_shape)?)];
                for &s in &slots {
                    ins.push(if channels_last {
                        self.nhwc_operand(id, s, &y_shape)?
                    } else {
                        let b = self.required(id, s)?;
                        (b, broadcast_strides(&self.plan.buffers[b].shape, &out_shape)?)
                    });
                }
                if let Some((b, _)) = folded {
                    // The bias along the channels: the last dim channels-last, dim 1 NCHW.
                    let mut st = vec![0i64; out_shape.len()];
                    st[if channels_last { out_shape.len() - 1 } else { 1 }] = 1;
                    ins.push((b, st));
                }
                self.launch_elementwise(id, k, ins, out)?;
            }
            (None, None) => unreachable!("a bare convolution always fuses"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: &ElementwiseOp, args: &[usize]) -> ExprNode {
        ExprNode::Op { op: op.clone(), args: args.to_vec() }
    }

    #[test]
    fn a_convolution_bias_joins_the_epilogue_at_the_accumulator() {
        let relu = ElementwiseOp::Unary(UnaryOp::Relu);
        let add = ElementwiseOp::Binary(BinaryOp::Add);
        // relu(in0) + in1, its bias as input 2.
        let e = Expr { nodes: vec![ExprNode::Input(0), op(&relu, &[0]), ExprNode::Input(1), op(&add, &[1, 2])] };
        assert_eq!(with_bias(&e, 2).map(|b| b.to_string()).as_deref(), Some("(Relu((in0 + in2)) + in1)"));
        assert_eq!(with_bias(&Expr::input(), 1).map(|b| b.to_string()).as_deref(), Some("(in0 + in1)"));
    }

    #[test]
    fn per_channel_means_broadcast_along_dim_1() {
        let out = [2, 8, 5, 5];
        assert!(per_channel(&[8], &[2, 8]));
        assert!(per_channel(&[1, 8, 1, 1], &out));
        assert!(per_channel(&[8, 1, 1], &out));
        // [8] lines up with the last dim of a 4-D output, not the channels.
        assert!(!per_channel(&[8], &out));
        assert!(!per_channel(&[1, 8, 5, 1], &out));
    }

    #[test]
    fn epilogue_split_between_cudnn_and_a_kernel() {
        let out = vec![1usize, 4, 3, 3];
        let add = ElementwiseOp::Binary(BinaryOp::Add);
        let relu = ElementwiseOp::Unary(UnaryOp::Relu);
        let ch = (vec![1, 4, 1, 1], DType::F16);
        let res = (out.clone(), DType::F16);
        // relu(z + (in0 + b)): bias, residual and ReLU, in any order of the sum.
        let e = Expr {
            nodes: vec![
                ExprNode::Input(0),
                ExprNode::Input(1),
                op(&add, &[0, 1]),
                ExprNode::Input(2),
                op(&add, &[3, 2]),
                op(&relu, &[4]),
            ],
        };
        let got = cudnn_epilogue(&e, &[ch.clone(), res.clone()], &out, DType::F16, false);
        assert_eq!(got, Some(CudnnEpilogue { relu: true, bias: Some(0), z: Some(1) }));
        // With the Conv's own bias, a second bias does not fit.
        assert_eq!(cudnn_epilogue(&e, &[ch.clone(), res.clone()], &out, DType::F16, true), None);
        // ReLU under the add, Clip, or a residual of another type are not cuDNN's.
        let inner = Expr { nodes: vec![ExprNode::Input(0), op(&relu, &[0]), ExprNode::Input(1), op(&add, &[1, 2])] };
        assert_eq!(cudnn_epilogue(&inner, std::slice::from_ref(&res), &out, DType::F16, false), None);
        let clip =
            Expr { nodes: vec![ExprNode::Input(0), op(&ElementwiseOp::Clip { min: Some(0.0), max: Some(6.0) }, &[0])] };
        assert_eq!(cudnn_epilogue(&clip, &[], &out, DType::F16, true), None);
        let e = Expr { nodes: vec![ExprNode::Input(0), ExprNode::Input(1), op(&add, &[0, 1])] };
        assert_eq!(cudnn_epilogue(&e, &[(out.clone(), DType::F32)], &out, DType::F16, false), None);
        // The accumulator twice is not a sum cuDNN makes.
        let twice = Expr { nodes: vec![ExprNode::Input(0), op(&add, &[0, 0])] };
        assert_eq!(cudnn_epilogue(&twice, &[], &out, DType::F16, false), None);
    }
}
