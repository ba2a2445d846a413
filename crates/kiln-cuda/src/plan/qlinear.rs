//! The integer matrix products and convolutions through `kernels/qlinear.cu`: MatMulInteger
//! and QLinearMatMul (batched, operands of one shared or one per batch matrix), ConvInteger
//! and QLinearConv (1-D and 2-D, groups), on u8 and i8 operands. Direct kernels: correct and
//! simple, not fast; scales are converted to f32 first where they have another type.

use super::*;
use kiln_ir::ops::linalg::ConvAttrs;

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

    /// MatMulInteger (`quantized` false) and QLinearMatMul.
    pub(super) fn integer_matmul(&mut self, id: NodeId, quantized: bool) -> Result<()> {
        let (a, b, a_zp, b_zp) = if quantized {
            (self.required(id, 0)?, self.required(id, 3)?, self.input(id, 2)?, self.input(id, 5)?)
        } else {
            (self.required(id, 0)?, self.required(id, 1)?, self.input(id, 2)?, self.input(id, 3)?)
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
        let y = self.out(id, 0)?;
        let total = batch * m * n;
        if self.len_of(y) != total {
            return Err(CudaError::Invalid(format!(
                "the output {:?} does not hold {batch} x {m} x {n}",
                self.plan.buffers[y].shape
            )));
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

    /// A ConvInteger epilogue (what the `qdq` fusion rules make of a quantized convolution):
    /// the integer convolution into an i32 accumulator, then the epilogue (dequantization,
    /// bias, activation) as a generated kernel.
    pub(super) fn integer_conv_epilogue(
        &mut self,
        id: NodeId,
        attrs: &ConvAttrs,
        base_inputs: usize,
        expr: &Expr,
    ) -> Result<()> {
        let out = self.out(id, 0)?;
        let name = format!("{}.acc", self.g.node(id).name);
        let acc = self.temp(name, DType::I32, self.plan.buffers[out].shape.clone());
        self.integer_conv_into(id, attrs, false, Some(acc))?;
        let mut ins = vec![acc];
        for s in base_inputs..self.g.node(id).num_inputs {
            ins.push(self.required(id, s)?);
        }
        let dts: Vec<DType> = ins.iter().map(|&x| self.plan.buffers[x].dtype).collect();
        let k = epilogue_kernel(expr, DType::I32, &dts[1..])?;
        self.launch_generated(id, k, &ins, out)
    }

    /// ConvInteger (`quantized` false) and QLinearConv, 1-D and 2-D.
    pub(super) fn integer_conv(&mut self, id: NodeId, attrs: &ConvAttrs, quantized: bool) -> Result<()> {
        self.integer_conv_into(id, attrs, quantized, None)
    }

    /// As [`Planner::integer_conv`], writing to `into` (of the output's shape) when given.
    fn integer_conv_into(
        &mut self,
        id: NodeId,
        attrs: &ConvAttrs,
        quantized: bool,
        into: Option<BufferId>,
    ) -> Result<()> {
        let (x, w, x_zp, w_zp) = if quantized {
            (self.required(id, 0)?, self.required(id, 3)?, self.input(id, 2)?, self.input(id, 5)?)
        } else {
            (self.required(id, 0)?, self.required(id, 1)?, self.input(id, 2)?, self.input(id, 3)?)
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
        let y = match into {
            Some(b) => b,
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
        let mut args = vec![Arg::Buffer(x), Arg::Buffer(w), x_zp.map_or(Arg::Null, Arg::Buffer)];
        args.extend([w_zp.map_or(Arg::Null, Arg::Buffer), Arg::Buffer(y), Arg::Struct(fields)]);
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
            format!("qlinear_conv_{xsx}_{wsx}_{ys}")
        } else {
            if self.plan.buffers[y].dtype != DType::I32 {
                return Err(CudaError::Invalid("ConvInteger's output must be i32".into()));
            }
            format!("conv_integer_{xsx}_{wsx}")
        };
        self.kernel(id, KernelFamily::Qlinear, kernel, launch::grid_stride(total as u64), args);
        Ok(())
    }
}
