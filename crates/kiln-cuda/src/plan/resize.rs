//! Resize through precomputed taps (`resize_taps_*` in `kernels/resize.cu`): the modes the
//! two-axis kernels do not cover (cubic, antialiased, tf_crop_and_resize, or resizing more than
//! the last two dims) run as one separable pass per resized axis, innermost first, each output
//! index a weighted sum of input indices listed in constant tables built here at plan time.
//! Intermediate passes are kept in f64, as the CPU reference computes.
//!
//! The taps come from `kiln_ir::ops::spatial::resize_taps`, the ONNX reference's sampling that
//! the CPU executor uses too; the GPU tests compare the two backends.

use super::*;
use kiln_ir::ops::spatial::{resize_taps, CoordTransform, ResizeAttrs};

impl Planner<'_> {
    /// Resize of `x` to `y` through tap tables: `scale`, `out_shape` and `roi` per dim (as
    /// the caller resolved them from the inputs), `axes` the resized dims in the order given.
    pub(super) fn resize_by_taps(
        &mut self,
        id: NodeId,
        a: &ResizeAttrs,
        x: BufferId,
        y: BufferId,
        scale: &[f64],
        roi: &[(f64, f64)],
        axes: &[usize],
    ) -> Result<()> {
        let (xs, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let ys = self.plan.buffers[y].shape.clone();
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(CudaError::Unsupported(format!("no resize_taps kernel for {dtype}")));
        }
        let passes: Vec<usize> = axes
            .iter()
            .rev()
            .copied()
            .filter(|&d| {
                !(scale[d] == 1.0
                    && ys[d] == xs[d]
                    && a.coordinate_transformation_mode != CoordTransform::TfCropAndResize)
            })
            .collect();
        if passes.is_empty() {
            // Every axis is the identity: a copy.
            let st = super::data::row_major(&xs);
            return self.permute_launch(id, x, y, &xs, &st, 0);
        }
        if xs.iter().product::<usize>() == 0 {
            return Err(CudaError::Invalid(format!("Resize of the empty {xs:?} to {ys:?}")));
        }
        let name = self.g.node(id).name.clone();
        let mut cur = x;
        let mut cur_shape = xs.clone();
        for (k, &d) in passes.iter().enumerate() {
            let taps: Vec<Option<Vec<(usize, f64)>>> =
                (0..ys[d]).map(|o| resize_taps(a, o, xs[d], ys[d], scale[d], roi[d])).collect();
            let ntaps = taps.iter().flatten().map(Vec::len).max().unwrap_or(1).max(1);
            let mut idx = vec![0i64; ys[d] * ntaps];
            let mut w = vec![0f64; ys[d] * ntaps];
            for (j, t) in taps.iter().enumerate() {
                match t {
                    None => idx[j * ntaps] = -1,
                    Some(t) => {
                        for (q, &(i, wt)) in t.iter().enumerate() {
                            idx[j * ntaps + q] = i as i64;
                            w[j * ntaps + q] = wt;
                        }
                    }
                }
            }
            let idx_t = Tensor::from_vec(vec![ys[d], ntaps], idx).map_err(|e| CudaError::Invalid(e.to_string()))?;
            let w_t = Tensor::from_vec(vec![ys[d], ntaps], w).map_err(|e| CudaError::Invalid(e.to_string()))?;
            let ib = self.const_buffer(format!("{name}.taps{d}"), idx_t);
            let wb = self.const_buffer(format!("{name}.weights{d}"), w_t);
            let mut next_shape = cur_shape.clone();
            next_shape[d] = ys[d];
            let last = k + 1 == passes.len();
            let out = if last { y } else { self.temp(format!("{name}.pass{d}"), DType::F64, next_shape.clone()) };
            let (outer, inner): (usize, usize) = (cur_shape[..d].iter().product(), cur_shape[d + 1..].iter().product());
            let n = outer * ys[d] * inner;
            let (si, so) = (
                crate::codegen::dtype_suffix(self.plan.buffers[cur].dtype)?,
                crate::codegen::dtype_suffix(self.plan.buffers[out].dtype)?,
            );
            let args = vec![
                Arg::Buffer(cur),
                Arg::Buffer(out),
                Arg::Buffer(ib),
                Arg::Buffer(wb),
                Arg::Struct(
                    [outer, cur_shape[d], ys[d], inner, ntaps]
                        .map(|v| Field::I64(v as i64))
                        .into_iter()
                        .chain([Field::F64(a.extrapolation_value as f64)])
                        .collect(),
                ),
            ];
            if n > 0 {
                self.kernel(
                    id,
                    KernelFamily::Resize,
                    format!("resize_taps_{si}_{so}"),
                    launch::grid_stride(n as u64),
                    args,
                );
            }
            cur = out;
            cur_shape = next_shape;
        }
        Ok(())
    }
}
