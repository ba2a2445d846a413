//! Pooling through `kernels/pool.cu`: MaxPool and AveragePool over one or two spatial dims
//! (a 1-D window is a 2-D one of height 1) with the 2-D kernels; three spatial dims, LpPool and
//! MaxPool's Indices output with the 3-D kernels; the global forms over any number; and
//! MaxUnpool as a clear and a scatter.

use super::*;
use kiln_ir::ops::pool::{PoolOp, PoolWindow, WindowDim};

impl Planner<'_> {
    pub(super) fn pool(&mut self, id: NodeId, p: &PoolOp) -> Result<()> {
        match p {
            PoolOp::MaxPool { window, column_major } => {
                let node = self.g.node(id);
                if node.outputs.get(1).is_some_and(|o| !o.name.is_empty()) {
                    return self.pool3(id, window, Pool3Kind::MaxIndices { column_major: *column_major });
                }
                if window.rank() == 3 {
                    return self.pool3(id, window, Pool3Kind::Max);
                }
                self.window_pool(id, window, true, false)
            }
            PoolOp::AveragePool { window, count_include_pad } => {
                if window.rank() == 3 {
                    return self.pool3(id, window, Pool3Kind::Avg { count_include_pad: *count_include_pad });
                }
                self.window_pool(id, window, false, *count_include_pad)
            }
            PoolOp::LpPool { window, p } => self.pool3(id, window, Pool3Kind::Lp { p: *p }),
            PoolOp::MaxUnpool { kernel_shape, strides, pads } => self.max_unpool(id, kernel_shape, strides, pads),
            PoolOp::GlobalAveragePool => self.global_pool(id, "globalavgpool"),
            PoolOp::GlobalMaxPool => self.global_pool(id, "globalmaxpool"),
            other => Err(CudaError::Unsupported(format!("the launch planner does not lower {} yet", other.name()))),
        }
    }

    fn window_pool(&mut self, id: NodeId, window: &PoolWindow, max: bool, count_include_pad: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let what = if max { "maxpool2d" } else { "avgpool2d" };
        // MaxPool also takes 8-bit integers (an INT8 network's quantized activations).
        let sfx = match self.plan.buffers[x].dtype {
            DType::I8 if max => "i8",
            DType::U8 if max => "u8",
            _ => self.float_suffix(x, what)?,
        };
        if !(3..=4).contains(&xs.len()) {
            return Err(CudaError::Unsupported(format!(
                "pooling over {} spatial dims (the kernels take 1 or 2)",
                xs.len().saturating_sub(2)
            )));
        }
        let dims = window.dims(&xs[2..]).map_err(CudaError::Invalid)?;
        let y = self.out(id, 0)?;
        let ys = self.plan.buffers[y].shape.clone();
        let want: Vec<usize> = xs[..2].iter().copied().chain(dims.iter().map(|d| d.output)).collect();
        if ys != want {
            return Err(CudaError::Invalid(format!("the windows give {want:?}, the node's output is {ys:?}")));
        }
        // A 1-D window is 2-D with a height of one cell.
        let unit = kiln_ir::ops::pool::WindowDim {
            input: 1,
            output: 1,
            pad_begin: 0,
            pad_end: 0,
            kernel: 1,
            stride: 1,
            dilation: 1,
        };
        let (h, w) = match dims[..] {
            [w] => (unit, w),
            [h, w] => (h, w),
            _ => unreachable!("rank checked above"),
        };
        let args = pool_args(xs[0] * xs[1], &h, &w, count_include_pad);
        let n: usize = ys.iter().product();
        if n == 0 {
            return Ok(());
        }
        let fields = args.param().0.chunks_exact(8).map(|c| Field::I64(i64::from_ne_bytes(word(c)))).collect();
        self.kernel(
            id,
            KernelFamily::Pool,
            format!("{what}_{sfx}"),
            launch::grid_stride(n as u64),
            vec![Arg::Buffer(x), Arg::Buffer(y), Arg::Struct(fields)],
        );
        Ok(())
    }

    /// A windowed pool over one to three spatial dims with the `*3d` kernels.
    fn pool3(&mut self, id: NodeId, window: &PoolWindow, kind: Pool3Kind) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let what = match kind {
            Pool3Kind::Max | Pool3Kind::MaxIndices { .. } => "maxpool3d",
            Pool3Kind::Avg { .. } => "avgpool3d",
            Pool3Kind::Lp { .. } => "lppool3d",
        };
        let sfx = self.float_suffix(x, what)?;
        if !(3..=5).contains(&xs.len()) {
            return Err(CudaError::Unsupported(format!(
                "pooling over {} spatial dims (the kernels take 1 to 3)",
                xs.len().saturating_sub(2)
            )));
        }
        if xs[2..].contains(&0) {
            return Err(CudaError::Invalid(format!("cannot pool empty spatial dims of shape {xs:?}")));
        }
        let dims = window.dims(&xs[2..]).map_err(CudaError::Invalid)?;
        let y = self.out(id, 0)?;
        let ys = self.plan.buffers[y].shape.clone();
        let want: Vec<usize> = xs[..2].iter().copied().chain(dims.iter().map(|d| d.output)).collect();
        if ys != want {
            return Err(CudaError::Invalid(format!("the windows give {want:?}, the node's output is {ys:?}")));
        }
        let indices = match kind {
            Pool3Kind::MaxIndices { .. } => {
                let b = self.out(id, 1)?;
                if self.plan.buffers[b].dtype != DType::I64 || self.plan.buffers[b].shape != ys {
                    return Err(CudaError::Invalid(format!(
                        "MaxPool's Indices must be i64 {ys:?}, found {} {:?}",
                        self.plan.buffers[b].dtype, self.plan.buffers[b].shape
                    )));
                }
                Some(b)
            }
            _ => None,
        };
        // Missing leading dims are single cells.
        let mut a = launch::Pool3Args {
            planes: (xs[0] * xs[1]) as i64,
            input: [1; 3],
            output: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            dilation: [1; 3],
            pad_begin: [0; 3],
            pad_end: [0; 3],
            count_include_pad: matches!(kind, Pool3Kind::Avg { count_include_pad: true }),
            column_major: matches!(kind, Pool3Kind::MaxIndices { column_major: true }),
            p: match kind {
                Pool3Kind::Lp { p } => p as f64,
                _ => 2.0,
            },
        };
        let lead = 3 - dims.len();
        for (k, d) in dims.iter().enumerate() {
            let i = |v: usize| v as i64;
            a.input[lead + k] = i(d.input);
            a.output[lead + k] = i(d.output);
            a.kernel[lead + k] = i(d.kernel);
            a.stride[lead + k] = i(d.stride);
            a.dilation[lead + k] = i(d.dilation);
            a.pad_begin[lead + k] = i(d.pad_begin);
            a.pad_end[lead + k] = i(d.pad_end);
        }
        if let Pool3Kind::Lp { p } = kind {
            if !(p.is_finite() && p > 0.0) {
                return Err(CudaError::Unsupported(format!("LpPool with p = {p}")));
            }
        }
        let n: usize = ys.iter().product();
        if n == 0 {
            return Ok(());
        }
        let mut args = vec![Arg::Buffer(x), Arg::Buffer(y)];
        if matches!(kind, Pool3Kind::Max | Pool3Kind::MaxIndices { .. }) {
            args.push(indices.map_or(Arg::Null, Arg::Buffer));
        }
        args.push(Arg::Struct(a.fields()));
        self.kernel(id, KernelFamily::Pool, format!("{what}_{sfx}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    /// MaxUnpool: zero the output, then scatter X to the flat positions in I (of the unpooled
    /// shape), placed in the corner of the output shape when output_shape (a constant) is
    /// given.
    fn max_unpool(&mut self, id: NodeId, kernel: &[usize], strides: &[usize], pads: &[usize]) -> Result<()> {
        let x = self.required(id, 0)?;
        let idx = self.required(id, 1)?;
        let xs = self.plan.buffers[x].shape.clone();
        let sfx = self.float_suffix(x, "maxunpool")?;
        let k = kernel.len();
        if xs.len() != k + 2 || xs.len() > crate::codegen::MAX_RANK {
            return Err(CudaError::Invalid(format!("X {xs:?} does not have the {k} spatial dims of kernel_shape")));
        }
        if self.plan.buffers[idx].shape != xs || self.plan.buffers[idx].dtype != DType::I64 {
            return Err(CudaError::Unsupported(format!(
                "I must be i64 of X's shape {xs:?}, found {} {:?}",
                self.plan.buffers[idx].dtype, self.plan.buffers[idx].shape
            )));
        }
        let mut inferred = xs[..2].to_vec();
        for d in 0..k {
            let (s, pb, pe) = (
                strides.get(d).copied().unwrap_or(1),
                pads.get(d).copied().unwrap_or(0),
                pads.get(d + k).copied().unwrap_or(0),
            );
            inferred
                .push(kiln_ir::ops::pool::unpool_size(xs[d + 2], kernel[d], s, pb, pe).map_err(CudaError::Invalid)?);
        }
        let y = self.out(id, 0)?;
        let ys = self.plan.buffers[y].shape.clone();
        if self.input(id, 2)?.is_some() {
            let want = self.const_ints(id, 2)?.unwrap_or_default();
            if want.len() != ys.len() || want.iter().zip(&ys).any(|(&a, &b)| a != b as i64) {
                return Err(CudaError::Invalid(format!("output_shape {want:?}, the node's output is {ys:?}")));
            }
        } else if ys != inferred {
            return Err(CudaError::Invalid(format!("the output should be {inferred:?}, the node's is {ys:?}")));
        }
        if ys.len() != inferred.len() {
            return Err(CudaError::Invalid(format!("output {ys:?} for the unpooled shape {inferred:?}")));
        }
        let n_out: usize = ys.iter().product();
        let n_in: usize = xs.iter().product();
        if n_out == 0 {
            return Ok(());
        }
        self.kernel(
            id,
            KernelFamily::Pool,
            format!("maxunpool_zero_{sfx}"),
            launch::grid_stride(n_out as u64),
            vec![Arg::Buffer(y), Arg::I64(n_out as i64)],
        );
        if n_in == 0 {
            return Ok(());
        }
        let name = format!("{}.index_error", self.g.node(id).name);
        let err = self.temp(name, DType::I32, vec![1]);
        let total: usize = inferred.iter().product();
        let message = format!("MaxUnpool {}: an index is outside [0, {total})", self.g.node(id).name);
        self.plan.error_flags.push((err, message));
        let mut fields = vec![Field::I64(inferred.len() as i64)];
        for dims in [&inferred, &ys] {
            fields.extend((0..crate::codegen::MAX_RANK).map(|d| Field::I64(dims.get(d).map_or(1, |&v| v as i64))));
        }
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(idx),
            Arg::Buffer(y),
            Arg::I64(n_in as i64),
            Arg::Struct(fields),
            Arg::Buffer(err),
        ];
        self.kernel(id, KernelFamily::Pool, format!("maxunpool_{sfx}"), launch::grid_stride(n_in as u64), args);
        Ok(())
    }

    fn global_pool(&mut self, id: NodeId, what: &str) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let sfx = self.float_suffix(x, what)?;
        if xs.len() < 2 {
            return Err(CudaError::Invalid(format!("global pooling of a {xs:?} input")));
        }
        let planes = xs[0] * xs[1];
        let hw: usize = xs[2..].iter().product();
        let y = self.out(id, 0)?;
        if planes == 0 {
            return Ok(());
        }
        if hw == 0 {
            return Err(CudaError::Unsupported("global pooling of an empty plane".into()));
        }
        let args = vec![Arg::Buffer(x), Arg::Buffer(y), Arg::I64(planes as i64), Arg::I64(hw as i64)];
        self.kernel(id, KernelFamily::Pool, format!("{what}_{sfx}"), launch::per_row(planes as u64, hw as u64), args);
        Ok(())
    }
}

/// Which `*3d` pooling kernel, with its options.
#[derive(Clone, Copy)]
enum Pool3Kind {
    Max,
    MaxIndices { column_major: bool },
    Avg { count_include_pad: bool },
    Lp { p: f32 },
}

/// The parameters of a 2-D pooling window over `planes` planes (N * C).
pub(super) fn pool_args(planes: usize, h: &WindowDim, w: &WindowDim, count_include_pad: bool) -> launch::PoolArgs {
    let i = |v: usize| v as i64;
    launch::PoolArgs {
        planes: i(planes),
        ih: i(h.input),
        iw: i(w.input),
        oh: i(h.output),
        ow: i(w.output),
        kh: i(h.kernel),
        kw: i(w.kernel),
        sh: i(h.stride),
        sw: i(w.stride),
        dh: i(h.dilation),
        dw: i(w.dilation),
        ph0: i(h.pad_begin),
        pw0: i(w.pad_begin),
        ph1: i(h.pad_end),
        pw1: i(w.pad_end),
        count_include_pad,
    }
}

/// Eight bytes of a parameter as an array.
pub(super) fn word(c: &[u8]) -> [u8; 8] {
    c.try_into().unwrap_or([0; 8])
}
