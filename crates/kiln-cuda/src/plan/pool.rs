//! Pooling through `kernels/pool.cu`: MaxPool and AveragePool over one or two spatial dims
//! (a 1-D window is a 2-D one of height 1), and the global forms over any number.

use super::*;
use kiln_ir::ops::pool::{PoolOp, PoolWindow};

impl Planner<'_> {
    pub(super) fn pool(&mut self, id: NodeId, p: &PoolOp) -> Result<()> {
        match p {
            PoolOp::MaxPool { window, .. } => {
                let node = self.g.node(id);
                if node.outputs.get(1).is_some_and(|o| !o.name.is_empty()) {
                    return Err(CudaError::Unsupported("MaxPool's Indices output has no kernel yet".into()));
                }
                self.window_pool(id, window, true, false)
            }
            PoolOp::AveragePool { window, count_include_pad } => {
                self.window_pool(id, window, false, *count_include_pad)
            }
            PoolOp::GlobalAveragePool => self.global_pool(id, "globalavgpool"),
            PoolOp::GlobalMaxPool => self.global_pool(id, "globalmaxpool"),
            other => Err(CudaError::Unsupported(format!("the launch planner does not lower {} yet", other.name()))),
        }
    }

    fn window_pool(&mut self, id: NodeId, window: &PoolWindow, max: bool, count_include_pad: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let what = if max { "maxpool2d" } else { "avgpool2d" };
        let sfx = self.float_suffix(x, what)?;
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
        let i = |v: usize| v as i64;
        let args = launch::PoolArgs {
            planes: i(xs[0] * xs[1]),
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
        };
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

/// Eight bytes of a parameter as an array.
pub(super) fn word(c: &[u8]) -> [u8; 8] {
    c.try_into().unwrap_or([0; 8])
}
