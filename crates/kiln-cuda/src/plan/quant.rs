//! Linear quantization through `kernels/quant.cu`: QuantizeLinear and DequantizeLinear per
//! tensor, per axis and per block, to and from the 8-, 16- and 4-bit integers, float8 and
//! float4, and DynamicQuantizeLinear. A scale of another type than the kernel reads (the
//! input's division precision for QuantizeLinear, f32 for DequantizeLinear) is converted by a
//! generated cast first, which rounds exactly as the CPU reference does.

use super::*;
use kiln_ir::ops::QuantOp;

/// Where element `i` finds its scale (see the comment at the top of `quant.cu`).
#[derive(Debug, PartialEq)]
struct ScaleIndex {
    dim: usize,
    inner: usize,
    block_size: usize,
    blocks: usize,
}

impl ScaleIndex {
    /// The layout of a scale of shape `s` over an input of shape `x`, checked as the CPU
    /// reference checks it.
    fn new(x: &[usize], s: &[usize], axis: i64, block_size: usize) -> Result<ScaleIndex> {
        let n: usize = x.iter().product();
        if s.iter().product::<usize>() == 1 {
            return Ok(ScaleIndex { dim: 1, inner: n.max(1), block_size: 0, blocks: 0 });
        }
        let r = x.len() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if !(0..r).contains(&a) {
            return Err(CudaError::Invalid(format!("axis {axis} is out of range for rank {r}")));
        }
        let a = a as usize;
        let dim = x[a];
        let inner: usize = x[a + 1..].iter().product();
        if block_size == 0 {
            if s != [dim] {
                return Err(CudaError::Invalid(format!(
                    "per-axis scale must have shape [{dim}] for input shape {x:?} and axis {axis}, found {s:?}"
                )));
            }
            return Ok(ScaleIndex { dim: dim.max(1), inner: inner.max(1), block_size: 0, blocks: 0 });
        }
        let blocks = dim.div_ceil(block_size);
        let ok = s.len() == x.len()
            && s.iter().zip(x).enumerate().all(|(d, (&p, &q))| if d == a { p == blocks } else { p == q });
        if !ok {
            return Err(CudaError::Invalid(format!(
                "blocked scale must have shape {x:?} with {blocks} blocks at axis {a}, found {s:?}"
            )));
        }
        Ok(ScaleIndex { dim: dim.max(1), inner: inner.max(1), block_size, blocks })
    }

    fn args(&self) -> [Arg; 4] {
        [self.dim, self.inner, self.block_size, self.blocks].map(|v| Arg::I64(v as i64))
    }
}

/// The types QuantizeLinear's kernels write.
const QUANTIZED: [DType; 11] = [
    DType::I8,
    DType::U8,
    DType::I16,
    DType::U16,
    DType::I4,
    DType::U4,
    DType::F8E4M3FN,
    DType::F8E4M3FNUZ,
    DType::F8E5M2,
    DType::F8E5M2FNUZ,
    DType::F4E2M1,
];

/// The types DequantizeLinear's kernels read.
const DEQUANTIZED: [DType; 12] = [
    DType::I8,
    DType::U8,
    DType::I16,
    DType::U16,
    DType::I32,
    DType::I4,
    DType::U4,
    DType::F8E4M3FN,
    DType::F8E4M3FNUZ,
    DType::F8E5M2,
    DType::F8E5M2FNUZ,
    DType::F4E2M1,
];

/// The IEEE float types, the inputs of quantization and outputs of dequantization.
const FLOATS: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F64];

impl Planner<'_> {
    pub(super) fn quant(&mut self, id: NodeId, op: &QuantOp) -> Result<()> {
        match *op {
            QuantOp::QuantizeLinear { axis, block_size, saturate, .. } => self.quantize(id, axis, block_size, saturate),
            QuantOp::DequantizeLinear { axis, block_size, .. } => self.dequantize(id, axis, block_size),
            QuantOp::DynamicQuantizeLinear => self.dynamic_quantize(id),
        }
    }

    /// `b` as `to`: itself, or a temporary written by a generated cast.
    pub(super) fn converted(&mut self, id: NodeId, b: BufferId, to: DType, what: &str) -> Result<BufferId> {
        let (from, shape) = (self.plan.buffers[b].dtype, self.plan.buffers[b].shape.clone());
        if from == to {
            return Ok(b);
        }
        let k = elementwise_kernel(&Expr::op(ElementwiseOp::Cast { to, saturate: true }, 1), &[from])?;
        let name = format!("{}.{what}_{to}", self.g.node(id).name);
        let t = self.temp(name, to, shape);
        self.launch_generated(id, k, &[b], t)?;
        Ok(t)
    }

    /// A zero point of `dtype` with one value per scale.
    fn zero_point(&self, zp: BufferId, dtype: DType, scale: BufferId) -> Result<()> {
        let (z, s) = (&self.plan.buffers[zp], &self.plan.buffers[scale]);
        if z.dtype != dtype {
            return Err(CudaError::Unsupported(format!("a zero point of {} with {dtype} data", z.dtype)));
        }
        let (zn, sn) = (z.shape.iter().product::<usize>(), s.shape.iter().product::<usize>());
        if zn != sn || (z.shape != s.shape && zn != 1) {
            return Err(CudaError::Invalid(format!(
                "zero point shape {:?} does not match scale shape {:?}",
                z.shape, s.shape
            )));
        }
        Ok(())
    }

    fn quantize(&mut self, id: NodeId, axis: i64, block_size: usize, saturate: bool) -> Result<()> {
        let (x, scale, zp) = (self.required(id, 0)?, self.required(id, 1)?, self.input(id, 2)?);
        let y = self.out(id, 0)?;
        let (xt, st, yt) = (self.plan.buffers[x].dtype, self.plan.buffers[scale].dtype, self.plan.buffers[y].dtype);
        if !FLOATS.contains(&xt) || !FLOATS.contains(&st) {
            return Err(CudaError::Unsupported(format!("QuantizeLinear of {xt} with a {st} scale has no kernel")));
        }
        if !QUANTIZED.contains(&yt) {
            return Err(CudaError::Unsupported(format!("QuantizeLinear to {yt} has no kernel")));
        }
        let idx = ScaleIndex::new(&self.plan.buffers[x].shape, &self.plan.buffers[scale].shape, axis, block_size)?;
        // Float8 ignores its zero point; float4 adds it; the integers add it and must match.
        let zp = match zp {
            Some(_) if yt.is_low_precision_float() && yt != DType::F4E2M1 => None,
            Some(z) => {
                self.zero_point(z, yt, scale)?;
                Some(z)
            }
            None => None,
        };
        // The reference divides in f64 for f64 inputs and in f32 otherwise.
        let ct = if xt == DType::F64 { DType::F64 } else { DType::F32 };
        let scale = self.converted(id, scale, ct, "scale")?;
        let n = self.plan.buffers[x].shape.iter().product::<usize>();
        let kernel = format!("quantize_{}_{}", xt.name(), yt.name());
        let mut args = vec![Arg::Buffer(x), Arg::Buffer(scale), zp.map_or(Arg::Null, Arg::Buffer), Arg::Buffer(y)];
        args.push(Arg::I64(n as i64));
        args.extend(idx.args());
        args.push(Arg::I32(saturate as i32));
        self.kernel(id, KernelFamily::Quant, kernel, launch::grid_stride(n as u64), args);
        Ok(())
    }

    fn dequantize(&mut self, id: NodeId, axis: i64, block_size: usize) -> Result<()> {
        let (x, scale, zp) = (self.required(id, 0)?, self.required(id, 1)?, self.input(id, 2)?);
        let y = self.out(id, 0)?;
        let (xt, st, yt) = (self.plan.buffers[x].dtype, self.plan.buffers[scale].dtype, self.plan.buffers[y].dtype);
        if !DEQUANTIZED.contains(&xt) || !FLOATS.contains(&st) || !FLOATS.contains(&yt) {
            return Err(CudaError::Unsupported(format!(
                "DequantizeLinear of {xt} with a {st} scale to {yt} has no kernel"
            )));
        }
        let idx = ScaleIndex::new(&self.plan.buffers[x].shape, &self.plan.buffers[scale].shape, axis, block_size)?;
        // As in the reference, float8 and float4 inputs ignore their zero point (float8's must
        // be zero: a constant one is checked here, one computed at run time is not).
        let zp = match zp {
            Some(z) if xt.is_low_precision_float() => {
                if let BufferKind::Const(t) = &self.plan.buffers[z].kind {
                    if xt != DType::F4E2M1 && t.to_f64_vec().iter().any(|&v| v != 0.0) {
                        return Err(CudaError::Invalid("a float8 zero point must be zero".into()));
                    }
                }
                None
            }
            Some(z) => {
                self.zero_point(z, xt, scale)?;
                Some(z)
            }
            None => None,
        };
        let scale = self.converted(id, scale, DType::F32, "scale")?;
        let n = self.plan.buffers[x].shape.iter().product::<usize>();
        let kernel = format!("dequantize_{}_{}", xt.name(), yt.name());
        let mut args = vec![Arg::Buffer(x), Arg::Buffer(scale), zp.map_or(Arg::Null, Arg::Buffer), Arg::Buffer(y)];
        args.push(Arg::I64(n as i64));
        args.extend(idx.args());
        self.kernel(id, KernelFamily::Quant, kernel, launch::grid_stride(n as u64), args);
        Ok(())
    }

    fn dynamic_quantize(&mut self, id: NodeId) -> Result<()> {
        let x = self.required(id, 0)?;
        let xt = self.plan.buffers[x].dtype;
        if !FLOATS.contains(&xt) {
            return Err(CudaError::Unsupported(format!("DynamicQuantizeLinear of {xt} has no kernel")));
        }
        let (y, y_scale, y_zp) = (self.out(id, 0)?, self.out(id, 1)?, self.out(id, 2)?);
        let range = self.temp(format!("{}.range", self.g.node(id).name), DType::F32, vec![2]);
        let n = self.plan.buffers[x].shape.iter().product::<usize>() as i64;
        let sfx = xt.name();
        let args = vec![Arg::Buffer(x), Arg::Buffer(y_scale), Arg::Buffer(y_zp), Arg::Buffer(range), Arg::I64(n)];
        // One block finds the range (its combination is in order, so any block size gives the
        // same result).
        let one_block = LaunchConfig::linear(1, launch::ROW_THREADS as u32);
        self.kernel(id, KernelFamily::Quant, format!("dynamic_quantize_range_{sfx}"), one_block, args);
        let args = vec![Arg::Buffer(x), Arg::Buffer(range), Arg::Buffer(y), Arg::I64(n)];
        self.kernel(id, KernelFamily::Quant, format!("dynamic_quantize_{sfx}"), launch::grid_stride(n as u64), args);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_index_per_tensor_axis_and_block() {
        let t = ScaleIndex::new(&[2, 3, 4], &[1], 1, 0).unwrap();
        assert_eq!(t, ScaleIndex { dim: 1, inner: 24, block_size: 0, blocks: 0 });
        let a = ScaleIndex::new(&[2, 3, 4], &[3], -2, 0).unwrap();
        assert_eq!(a, ScaleIndex { dim: 3, inner: 4, block_size: 0, blocks: 0 });
        let b = ScaleIndex::new(&[2, 5, 4], &[2, 3, 4], 1, 2).unwrap();
        assert_eq!(b, ScaleIndex { dim: 5, inner: 4, block_size: 2, blocks: 3 });
        assert!(ScaleIndex::new(&[2, 3, 4], &[4], 1, 0).unwrap_err().to_string().contains("shape [3]"));
        assert!(ScaleIndex::new(&[2, 5, 4], &[2, 2, 4], 1, 2).unwrap_err().to_string().contains("3 blocks"));
        assert!(ScaleIndex::new(&[2, 3], &[3], 2, 0).is_err());
    }
}
