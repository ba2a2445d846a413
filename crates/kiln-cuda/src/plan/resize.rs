//! Resize through precomputed taps (`resize_taps_*` in `kernels/resize.cu`): the modes the
//! two-axis kernels do not cover (cubic, antialiased, tf_crop_and_resize, or resizing more than
//! the last two dims) run as one separable pass per resized axis, innermost first, each output
//! index a weighted sum of input indices listed in constant tables built here at plan time.
//! Intermediate passes are kept in f64, as the CPU reference computes.
//!
//! The taps follow the ONNX reference implementation exactly as kiln-cpu's `resize_taps` does;
//! the GPU tests compare the two.

use super::*;
use kiln_ir::ops::spatial::{CoordTransform, NearestMode, ResizeAttrs, ResizeMode};

/// The input taps (index, weight) of output index `o` along one axis, or `None` where the
/// sample falls outside the input in tf_crop_and_resize mode.
pub(super) fn resize_taps(
    a: &ResizeAttrs,
    o: usize,
    in_len: usize,
    out_len: usize,
    scale: f64,
    roi: (f64, f64),
) -> Option<Vec<(usize, f64)>> {
    let xo = o as f64;
    let inw = in_len as f64;
    // The reference uses the unrounded output length here.
    let outw = scale * inw;
    let x = match a.coordinate_transformation_mode {
        CoordTransform::AlignCorners => {
            if outw == 1.0 {
                0.0
            } else {
                xo * (inw - 1.0) / (outw - 1.0)
            }
        }
        CoordTransform::Asymmetric => xo / scale,
        CoordTransform::TfCropAndResize => {
            let (s, e) = roi;
            let x = if outw == 1.0 { (e - s) * (inw - 1.0) / 2.0 } else { xo * (e - s) * (inw - 1.0) / (outw - 1.0) }
                + s * (inw - 1.0);
            if x < 0.0 || x > inw - 1.0 {
                return None;
            }
            x
        }
        CoordTransform::PytorchHalfPixel => {
            if outw == 1.0 {
                -0.5
            } else {
                (xo + 0.5) / scale - 0.5
            }
        }
        CoordTransform::HalfPixel => (xo + 0.5) / scale - 0.5,
        CoordTransform::HalfPixelSymmetric => {
            let adjustment = out_len as f64 / outw;
            let offset = inw / 2.0 * (1.0 - adjustment);
            offset + (xo + 0.5) / scale - 0.5
        }
    };
    let floor = x.floor();
    // The ratio is in (0, 1]: an integral coordinate counts as the right end of its interval.
    let ratio = if x == floor { 1.0 } else { x - floor };
    let mut coeffs = match a.mode {
        ResizeMode::Nearest => {
            let right = if ratio == 1.0 {
                true
            } else {
                match a.nearest_mode {
                    NearestMode::RoundPreferFloor => ratio > 0.5,
                    NearestMode::RoundPreferCeil => ratio >= 0.5,
                    NearestMode::Floor => false,
                    NearestMode::Ceil => true,
                }
            };
            if right {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        ResizeMode::Linear if a.antialias => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            let c: Vec<f64> =
                (start..start + footprint).map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0)).collect();
            normalized(c)
        }
        ResizeMode::Linear => vec![1.0 - ratio, ratio],
        ResizeMode::Cubic if a.antialias => {
            let s = scale.min(1.0);
            let aa = a.cubic_coeff_a as f64;
            let start = (-2.0 / s).floor() as i64 + 1;
            let end = 2 - start;
            let c: Vec<f64> = (start..end).map(|i| cubic_kernel(s * (i as f64 - ratio), aa)).collect();
            normalized(c)
        }
        ResizeMode::Cubic => {
            let aa = a.cubic_coeff_a as f64;
            vec![
                cubic_kernel(ratio + 1.0, aa),
                cubic_kernel(ratio, aa),
                cubic_kernel(1.0 - ratio, aa),
                cubic_kernel(2.0 - ratio, aa),
            ]
        }
    };
    // The reference picks the n indices nearest to x (ties to the smaller) in the input padded
    // by n/2 edge copies on each side; they form a window starting at ceil(x) - n/2, slid to
    // stay inside the padded range.
    let n = coeffs.len() as i64;
    let pad = (n + 1) / 2;
    let len = in_len as i64;
    let start = (x.ceil() as i64 - n / 2).clamp(-pad, (len + pad - n).max(-pad));
    let idx: Vec<i64> = (start..start + n).collect();
    if a.exclude_outside {
        for (c, &i) in coeffs.iter_mut().zip(&idx) {
            if i < 0 || i >= len {
                *c = 0.0;
            }
        }
        coeffs = normalized(coeffs);
    }
    Some(idx.iter().zip(coeffs).map(|(&i, c)| (i.clamp(0, (len - 1).max(0)) as usize, c)).collect())
}

/// Keys' cubic convolution kernel with parameter `a`.
fn cubic_kernel(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

fn normalized(c: Vec<f64>) -> Vec<f64> {
    let s: f64 = c.iter().sum();
    c.into_iter().map(|v| v / s).collect()
}

impl Planner<'_> {
    /// A constant buffer that no graph value names (tables the planner builds).
    fn const_buffer(&mut self, name: String, t: Tensor) -> BufferId {
        let (dtype, shape) = (t.dtype(), t.shape().to_vec());
        self.plan.buffers.push(Buffer {
            name,
            dtype,
            shape,
            kind: BufferKind::Const(t),
            output: false,
            last_use: None,
        });
        self.plan.buffers.len() - 1
    }

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
