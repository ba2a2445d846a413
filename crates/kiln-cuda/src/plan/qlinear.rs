//! The integer matrix products and convolutions: MatMulInteger and QLinearMatMul (batched,
//! operands of one shared or one per batch matrix), ConvInteger and QLinearConv (1-D and 2-D,
//! groups), on u8 and i8 operands, and the epilogue nodes of fusion's `qdq` rules over
//! MatMulInteger and ConvInteger (the integer op into an i32 accumulator, then the epilogue's
//! dequantization, bias and activation as a generated kernel).
//!
//! A MatMulInteger of i8 by i8 without zero points (or with constant zero ones) whose `k` and
//! `n` are multiples of 4 is a cuBLASLt GEMM on the integer tensor cores ([`crate::blas`]): B
//! is stored `[n, k]` for it (a constant transposed here, once; a computed B by a permute
//! step). A ConvInteger or QLinearConv of i8 by i8 with one group and zero points absent or
//! constant zeros runs the tensor-core implicit-GEMM kernels (`conv_integer_tc_i8_i8`,
//! `qlinear_conv_tc_i8_i8_<y>`) on the layouts as they are. Everything else runs the direct
//! kernels of `kernels/qlinear.cu`: correct and simple, not fast; scales are converted to f32
//! first where they have another type.

use super::*;
use kiln_ir::ops::linalg::ConvAttrs;

/// `t` with its last two dims swapped: a weight `[..., k, n]` stored `[..., n, k]`.
pub(super) fn swap_last_two(t: &Tensor) -> Result<Tensor> {
    let shape = t.shape();
    let r = shape.len();
    if r < 2 {
        return Err(CudaError::Invalid(format!("a matrix of shape {shape:?} to transpose")));
    }
    let (rows, cols) = (shape[r - 2], shape[r - 1]);
    let size = t.dtype().size();
    let src = crate::host::tensor_bytes(t)?;
    let mut dst = vec![0u8; src.len()];
    let mat = rows * cols * size;
    for (from, to) in src.chunks_exact(mat.max(1)).zip(dst.chunks_exact_mut(mat.max(1))) {
        for i in 0..rows {
            for j in 0..cols {
                let (f, d) = ((i * cols + j) * size, (j * rows + i) * size);
                to[d..d + size].copy_from_slice(&from[f..f + size]);
            }
        }
    }
    let mut out = shape.to_vec();
    out.swap(r - 2, r - 1);
    crate::host::tensor_from_bytes(t.dtype(), &out, &dst)
}

/// The shape of an integer matrix product: `[batch..., m, k] x [batch..., k, n]`, with each
/// operand's elements between batches (0: one matrix for every batch).
struct Product {
    m: usize,
    k: usize,
    n: usize,
    batch: usize,
    strides: [usize; 2],
}

/// The kernel suffix of an 8-bit operand type.
fn q8(dt: DType, what: &str) -> Result<&'static str> {
    match dt {
        DType::U8 => Ok("u8"),
        DType::I8 => Ok("i8"),
        other => Err(CudaError::Unsupported(format!("{what} of {other} has no integer kernel (u8 and i8 only)"))),
    }
}

/// How the kernel rounds scale arithmetic: in the scales' own type, as the reference does.
fn round_mode(dt: DType) -> i32 {
    match dt {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    }
}

impl Planner<'_> {
    fn len_of(&self, b: BufferId) -> usize {
        self.plan.buffers[b].shape.iter().product()
    }

    /// A zero point or scale that is one value or one per `axis_len` (rank 1 at most), and,
    /// for zero points, of the operand's type.
    fn per_axis(&self, b: BufferId, what: &str, axis_len: usize, dtype: Option<DType>) -> Result<usize> {
        let buf = &self.plan.buffers[b];
        let n = self.len_of(b);
        if buf.shape.len() > 1 || n != 1 && n != axis_len {
            return Err(CudaError::Invalid(format!(
                "{what} must be a scalar or have {axis_len} values, found shape {:?}",
                buf.shape
            )));
        }
        if let Some(d) = dtype.filter(|&d| d != buf.dtype) {
            return Err(CudaError::Invalid(format!("{what} must be {d}, found {}", buf.dtype)));
        }
        Ok(n)
    }

    /// The requantization operands of QLinearMatMul and QLinearConv: the three scales as f32
    /// buffers and the output zero point; the output's kernel suffix; the rounding mode of the
    /// first scale's type.
    fn requant_operands(
        &mut self,
        id: NodeId,
        scales: [BufferId; 3],
        y_zp: Option<BufferId>,
        y: BufferId,
    ) -> Result<(Vec<Arg>, &'static str, Arg)> {
        let yt = self.plan.buffers[y].dtype;
        let ys = q8(yt, "a quantized output")?;
        for s in scales {
            let dt = self.plan.buffers[s].dtype;
            if !matches!(dt, DType::F32 | DType::F16 | DType::BF16 | DType::F64) || self.len_of(s) == 0 {
                return Err(CudaError::Invalid(format!("scales must be non-empty floats, found {dt}")));
            }
        }
        if let Some(z) = y_zp.filter(|&z| self.plan.buffers[z].dtype != yt || self.len_of(z) == 0) {
            return Err(CudaError::Invalid(format!("y_zero_point must be {yt}, found {}", self.plan.buffers[z].dtype)));
        }
        let mode = round_mode(self.plan.buffers[scales[0]].dtype);
        let mut args = vec![];
        for (i, s) in scales.into_iter().enumerate() {
            args.push(Arg::Buffer(self.converted(id, s, DType::F32, &format!("scale{i}"))?));
        }
        args.push(y_zp.map_or(Arg::Null, Arg::Buffer));
        Ok((args, ys, Arg::I32(mode)))
    }

    /// Whether `b` holds constant zeros (a zero point that changes nothing).
    pub(super) fn const_zeros(&self, b: BufferId) -> bool {
        let owner = match self.plan.buffers[b].kind {
            BufferKind::View(o) => o,
            _ => b,
        };
        matches!(&self.plan.buffers[owner].kind, BufferKind::Const(t) if t.to_f64_vec().iter().all(|&v| v == 0.0))
    }

    /// A MatMulInteger or ConvInteger epilogue node: the integer op into an i32 accumulator of
    /// the output's shape, then the epilogue as a generated kernel.
    pub(super) fn integer_epilogue(
        &mut self,
        id: NodeId,
        base: &LinalgOp,
        base_inputs: usize,
        expr: &Expr,
    ) -> Result<()> {
        if matches!(base, LinalgOp::MatMulInteger) && self.igemm_matmul(id, base_inputs, expr)? {
            return Ok(());
        }
        let info = self.g.value_info(Value { node: id, slot: 0 });
        let shape = info
            .ty
            .concrete_shape()
            .ok_or_else(|| CudaError::Unsupported(format!("value {} has no static type ({})", info.name, info.ty)))?;
        let acc = self.temp(format!("{}.acc", self.g.node(id).name), DType::I32, shape);
        match base {
            LinalgOp::MatMulInteger => self.integer_matmul_into(id, false, base_inputs, Some(acc))?,
            LinalgOp::ConvInteger(attrs) => self.integer_conv_into(id, attrs, false, base_inputs, Some(acc))?,
            other => return Err(CudaError::Unsupported(format!("an epilogue over {}", other.name()))),
        }
        let mut ins = vec![acc];
        for s in base_inputs..self.g.node(id).num_inputs {
            ins.push(self.required(id, s)?);
        }
        let dts: Vec<DType> = ins.iter().map(|&b| self.plan.buffers[b].dtype).collect();
        let k = epilogue_kernel(expr, DType::I32, &dts[1..])?;
        let out = self.out(id, 0)?;
        self.launch_generated(id, k, &ins, out)
    }

    /// MatMulInteger (`quantized` false) and QLinearMatMul.
    pub(super) fn integer_matmul(&mut self, id: NodeId, quantized: bool) -> Result<()> {
        self.integer_matmul_into(id, quantized, self.g.node(id).num_inputs, None)
    }

    /// [`Planner::integer_matmul`] over the node's first `base_inputs` inputs, into `out`
    /// where given (an accumulator), else into the node's output.
    fn integer_matmul_into(
        &mut self,
        id: NodeId,
        quantized: bool,
        base_inputs: usize,
        out: Option<BufferId>,
    ) -> Result<()> {
        let base_input = |p: &Self, slot: usize| if slot < base_inputs { p.input(id, slot) } else { Ok(None) };
        let (a, b, a_zp, b_zp) = if quantized {
            (self.required(id, 0)?, self.required(id, 3)?, base_input(self, 2)?, base_input(self, 5)?)
        } else {
            (self.required(id, 0)?, self.required(id, 1)?, base_input(self, 2)?, base_input(self, 3)?)
        };
        let (at, bt) = (self.plan.buffers[a].dtype, self.plan.buffers[b].dtype);
        let (asx, bsx) = (q8(at, "A")?, q8(bt, "B")?);
        let (ash, bsh) = (self.plan.buffers[a].shape.clone(), self.plan.buffers[b].shape.clone());
        if ash.is_empty() || bsh.is_empty() {
            return Err(CudaError::Invalid(format!("matrix product of scalars ({ash:?} x {bsh:?})")));
        }
        let a2 = if ash.len() == 1 { vec![1, ash[0]] } else { ash.clone() };
        let b2 = if bsh.len() == 1 { vec![bsh[0], 1] } else { bsh.clone() };
        let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
        let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
        if k != k2 {
            return Err(CudaError::Invalid(format!("matrix product of {ash:?} and {bsh:?}: inner dims differ")));
        }
        let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
        let out_batch = kiln_ir::ops::infer::broadcast_shapes(ab, bb)
            .ok_or_else(|| CudaError::Invalid(format!("batch dims of {ash:?} and {bsh:?} do not broadcast")))?;
        let batch: usize = out_batch.iter().product();
        // One matrix shared by every batch, or one per batch.
        let stride = |xb: &[usize], size: usize| -> Result<usize> {
            let count: usize = xb.iter().product();
            if count == 1 {
                Ok(0)
            } else if xb == out_batch.as_slice() {
                Ok(size)
            } else {
                Err(CudaError::Unsupported(format!(
                    "an integer matrix product whose batch {xb:?} broadcasts partly to {out_batch:?}"
                )))
            }
        };
        let (sa, sb) = (stride(ab, m * k)?, stride(bb, k * n)?);
        let a_zp_n = a_zp.map(|z| self.per_axis(z, "A's zero point", m, Some(at))).transpose()?.unwrap_or(1);
        let b_zp_n = b_zp.map(|z| self.per_axis(z, "B's zero point", n, Some(bt))).transpose()?.unwrap_or(1);
        let y = match out {
            Some(y) => y,
            None => self.out(id, 0)?,
        };
        let total = batch * m * n;
        if self.len_of(y) != total {
            return Err(CudaError::Invalid(format!(
                "the output {:?} does not hold {batch} x {m} x {n}",
                self.plan.buffers[y].shape
            )));
        }
        let zero_points = [a_zp, b_zp].into_iter().flatten().all(|z| self.const_zeros(z));
        if !quantized && at == DType::I8 && bt == DType::I8 && zero_points {
            let p = Product { m, k, n, batch, strides: [sa, sb] };
            if self.int8_gemm(id, a, b, &p, y)? {
                return Ok(());
            }
        }
        let mut args = vec![Arg::Buffer(a), Arg::Buffer(b), a_zp.map_or(Arg::Null, Arg::Buffer)];
        args.push(b_zp.map_or(Arg::Null, Arg::Buffer));
        args.extend([total, m, n, k, sa, sb, a_zp_n, b_zp_n].map(|v| Arg::I64(v as i64)));
        args.push(Arg::Buffer(y));
        let kernel = if quantized {
            let scales = [self.required(id, 1)?, self.required(id, 4)?, self.required(id, 6)?];
            let a_scale_n = self.per_axis(scales[0], "a_scale", m, None)?;
            let b_scale_n = self.per_axis(scales[1], "b_scale", n, None)?;
            self.per_axis(scales[2], "y_scale", 1, None)?;
            let (rq, ys, mode) = self.requant_operands(id, scales, self.input(id, 7)?, y)?;
            args.extend(rq);
            args.extend([Arg::I64(a_scale_n as i64), Arg::I64(b_scale_n as i64), mode]);
            format!("qlinear_matmul_{asx}_{bsx}_{ys}")
        } else {
            if self.plan.buffers[y].dtype != DType::I32 {
                return Err(CudaError::Invalid("MatMulInteger's output must be i32".into()));
            }
            format!("matmul_integer_{asx}_{bsx}")
        };
        self.kernel(id, KernelFamily::Qlinear, kernel, launch::grid_stride(total as u64), args);
        Ok(())
    }

    /// The i8 product `y = a b` (i32) as a cuBLASLt GEMM on the integer tensor cores, if its
    /// shape qualifies; else nothing is planned and the result is false.
    ///
    /// cuBLASLt's IMMA kernels over ordinary (column-major) layouts want the "TN" form (its A
    /// transposed, its B not: both read along `k`), leading dimensions that are multiples of 4,
    /// its `m` and `k` multiples of 4, and pointers 4-byte aligned. Its A is our B and its `m`
    /// our `n` (see [`crate::blas`]), so B is stored `[n, k]` (`trans_b`), A stays `[m, k]`,
    /// and `k` and `n` must be multiples of 4; `m` and the batch are free. Buffers start
    /// 256-byte aligned (the runtime's arena and weights), and batches of i8 matrices whose
    /// dims are multiples of 4 start 4-byte aligned.
    fn int8_gemm(&mut self, id: NodeId, a: BufferId, b: BufferId, p: &Product, y: BufferId) -> Result<bool> {
        let Product { m, k, n, batch, strides: [sa, sb] } = *p;
        if m == 0 || batch == 0 || k == 0 || n == 0 || !k.is_multiple_of(4) || !n.is_multiple_of(4) {
            return Ok(false);
        }
        // (A vector B has n = 1, so B here is a matrix or a stack of them.)
        if self.plan.buffers[b].shape.len() < 2 {
            return Ok(false);
        }
        // B as [..., n, k]: a constant transposed once here, a computed one by a permute step.
        let b_nk = match self.rewritten_const(id, 1, "nk", swap_last_two)? {
            Some(t) => t,
            None => {
                let (shape, dtype) = (self.plan.buffers[b].shape.clone(), self.plan.buffers[b].dtype);
                let r = shape.len();
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 2, r - 1);
                let nk: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
                let t = self.temp(format!("{}.b_nk", self.g.node(id).name), dtype, nk);
                self.permute(id, b, t, &perm)?;
                t
            }
        };
        let gemm = GemmStep {
            a,
            b: b_nk,
            c: None,
            d: y,
            m,
            n,
            k,
            batch,
            batch_strides: [sa, sb, m * n],
            trans_a: false,
            trans_b: true,
            alpha: 1.0,
            beta: 0.0,
            dtype: DType::I8,
            out_dtype: DType::I32,
            epilogue: GemmEpilogue::None,
        };
        self.step(id, StepKind::Gemm(gemm));
        Ok(true)
    }

    /// ConvInteger (`quantized` false) and QLinearConv, 1-D and 2-D.
    pub(super) fn integer_conv(&mut self, id: NodeId, attrs: &ConvAttrs, quantized: bool) -> Result<()> {
        self.integer_conv_into(id, attrs, quantized, self.g.node(id).num_inputs, None)
    }

    /// [`Planner::integer_conv`] over the node's first `base_inputs` inputs, into `out` where
    /// given (an accumulator), else into the node's output.
    fn integer_conv_into(
        &mut self,
        id: NodeId,
        attrs: &ConvAttrs,
        quantized: bool,
        base_inputs: usize,
        out: Option<BufferId>,
    ) -> Result<()> {
        let base_input = |p: &Self, slot: usize| if slot < base_inputs { p.input(id, slot) } else { Ok(None) };
        let (x, w, x_zp, w_zp) = if quantized {
            (self.required(id, 0)?, self.required(id, 3)?, base_input(self, 2)?, base_input(self, 5)?)
        } else {
            (self.required(id, 0)?, self.required(id, 1)?, base_input(self, 2)?, base_input(self, 3)?)
        };
        let (xt, wt) = (self.plan.buffers[x].dtype, self.plan.buffers[w].dtype);
        let (xsx, wsx) = (q8(xt, "the input")?, q8(wt, "the weight")?);
        let (xs, ws) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[w].shape.clone());
        if !(3..=4).contains(&xs.len()) || ws.len() != xs.len() {
            return Err(CudaError::Unsupported(format!(
                "integer convolution of {xs:?} by {ws:?} (the kernel takes 1 or 2 spatial dims)"
            )));
        }
        let dims = attrs.dims(&xs[2..], &ws[2..]).map_err(CudaError::Invalid)?;
        let (c, m, group) = (xs[1], ws[0], attrs.group.max(1));
        if c % group != 0 || m % group != 0 || ws[1] * group != c {
            return Err(CudaError::Invalid(format!("{group} groups do not divide input {xs:?} and weight {ws:?}")));
        }
        let y = match out {
            Some(y) => y,
            None => self.out(id, 0)?,
        };
        let mut want = vec![xs[0], m];
        want.extend(dims.iter().map(|d| d.output));
        if self.plan.buffers[y].shape != want {
            return Err(CudaError::Invalid(format!("the output {:?} should be {want:?}", self.plan.buffers[y].shape)));
        }
        if let Some(z) = x_zp {
            if self.len_of(z) != 1 || self.plan.buffers[z].dtype != xt {
                return Err(CudaError::Invalid(format!("the input's zero point must be one {xt} value")));
            }
        }
        let w_zp_n = w_zp.map(|z| self.per_axis(z, "the weight's zero point", m, Some(wt))).transpose()?.unwrap_or(1);
        // A 1-D convolution is a 2-D one of height 1.
        let (hd, wd) = match dims.as_slice() {
            [d] => (None, d),
            [h, d] => (Some(h), d),
            _ => return Err(CudaError::Invalid("a convolution needs spatial dims".into())),
        };
        let total: usize = want.iter().product();
        let g = launch::QlConvArgs {
            total: total as i64,
            c: c as i64,
            h: hd.map_or(1, |d| d.input) as i64,
            w: wd.input as i64,
            m: m as i64,
            kh: hd.map_or(1, |d| d.kernel) as i64,
            kw: wd.kernel as i64,
            oh: hd.map_or(1, |d| d.output) as i64,
            ow: wd.output as i64,
            sh: hd.map_or(1, |d| d.stride) as i64,
            sw: wd.stride as i64,
            dh: hd.map_or(1, |d| d.dilation) as i64,
            dw: wd.dilation as i64,
            ph: hd.map_or(0, |d| d.pad_begin) as i64,
            pw: wd.pad_begin as i64,
            group: group as i64,
            w_zp_n: w_zp_n as i64,
        };
        let word = |c: &[u8]| -> [u8; 8] { c.try_into().unwrap_or([0; 8]) };
        let fields = g.param().0.chunks_exact(8).map(|c| Field::I64(i64::from_ne_bytes(word(c)))).collect();
        // The tensor-core kernels take i8 by i8, one group, and zero points that change nothing
        // (so they are not passed); everything else runs the direct kernels.
        let tc = xt == DType::I8
            && wt == DType::I8
            && group == 1
            && total > 0
            && [x_zp, w_zp].into_iter().flatten().all(|z| self.const_zeros(z))
            && g.fits_tensor_cores();
        let (mut args, infix, config) = if tc {
            let cfg = launch::conv_tc((total / m) as u64, m as u64)?;
            (vec![Arg::Buffer(x), Arg::Buffer(w), Arg::Buffer(y), Arg::Struct(fields)], "_tc", cfg)
        } else {
            let mut args = vec![Arg::Buffer(x), Arg::Buffer(w), x_zp.map_or(Arg::Null, Arg::Buffer)];
            args.extend([w_zp.map_or(Arg::Null, Arg::Buffer), Arg::Buffer(y), Arg::Struct(fields)]);
            (args, "", launch::grid_stride(total as u64))
        };
        let kernel = if quantized {
            let bias = self.input(id, 8)?;
            if let Some(bb) = bias {
                if self.plan.buffers[bb].dtype != DType::I32 || self.len_of(bb) != m {
                    return Err(CudaError::Invalid(format!("QLinearConv's bias must be {m} i32 values")));
                }
            }
            let scales = [self.required(id, 1)?, self.required(id, 4)?, self.required(id, 6)?];
            if self.len_of(scales[0]) != 1 {
                return Err(CudaError::Invalid("QLinearConv's x_scale must be a scalar".into()));
            }
            let w_scale_n = self.per_axis(scales[1], "w_scale", m, None)?;
            let (rq, ys, mode) = self.requant_operands(id, scales, self.input(id, 7)?, y)?;
            args.push(bias.map_or(Arg::Null, Arg::Buffer));
            args.extend(rq);
            args.extend([Arg::I64(w_scale_n as i64), mode]);
            format!("qlinear_conv{infix}_{xsx}_{wsx}_{ys}")
        } else {
            if self.plan.buffers[y].dtype != DType::I32 {
                return Err(CudaError::Invalid("ConvInteger's output must be i32".into()));
            }
            format!("conv_integer{infix}_{xsx}_{wsx}")
        };
        self.kernel(id, KernelFamily::Qlinear, kernel, config, args);
        Ok(())
    }
}
