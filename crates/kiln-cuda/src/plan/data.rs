//! Data movement through `kernels/layout.cu` and `kernels/resize.cu`: Slice, Expand and Tile
//! as strided copies (`permute`), Split as row copies (`copy_rows`), Pad, and Resize.
//!
//! Their index inputs (starts, pads, scales, ...) must be constants, as constant folding leaves
//! them in a static-shape graph.

use super::pool::word;
use super::*;
use kiln_ir::ops::layout::{slice_range, PadMode, SliceAttrs};
use kiln_ir::ops::spatial::{AspectRatioPolicy, CoordTransform, NearestMode, ResizeAttrs, ResizeInputs, ResizeMode};

/// The strides of a row-major tensor.
pub(super) fn row_major(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d] as i64;
    }
    s
}

impl Planner<'_> {
    /// The constant tensor feeding input `slot`, `None` if the input is absent.
    pub(super) fn const_input(&self, id: NodeId, slot: usize) -> Result<Option<&Tensor>> {
        match self.g.inputs_of(id).get(slot).copied().flatten() {
            None => Ok(None),
            Some(v) => match &self.g.node(v.node).op {
                Op::Const(t) => Ok(Some(t)),
                _ => Err(CudaError::Unsupported(format!(
                    "input {slot} is computed at run time; the kernel needs it constant"
                ))),
            },
        }
    }

    pub(super) fn const_ints(&self, id: NodeId, slot: usize) -> Result<Option<Vec<i64>>> {
        Ok(self.const_input(id, slot)?.map(Tensor::to_i64_vec))
    }

    /// `y[i] = x[offset + sum(coord[d] * strides[d])]` over `y`'s elements in the order of
    /// `shape` (which has `y`'s element count).
    pub(super) fn permute_launch(
        &mut self,
        id: NodeId,
        x: BufferId,
        y: BufferId,
        shape: &[usize],
        strides: &[i64],
        offset: i64,
    ) -> Result<()> {
        let n: usize = shape.iter().product();
        if n == 0 {
            return Ok(());
        }
        let (dims, _) = crate::codegen::collapse(shape, &[strides.to_vec()])?;
        if dims.len() > crate::codegen::MAX_RANK {
            return Err(CudaError::Unsupported(format!(
                "a strided copy of rank {} after collapsing (the kernel takes {})",
                dims.len(),
                crate::codegen::MAX_RANK
            )));
        }
        let (param, rank) = launch::strided_param(shape, strides)?;
        let fields = param.0.chunks_exact(8).map(|c| Field::I64(i64::from_ne_bytes(word(c)))).collect();
        let w = self.width(x)?;
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(y),
            Arg::I64(n as i64),
            Arg::I32(rank),
            Arg::Struct(fields),
            Arg::I64(offset),
        ];
        self.kernel(id, KernelFamily::Layout, format!("permute_{w}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    /// Pads `x` into `y` (both contiguous, `y`'s shape the padded one) with `begin[d]` cells
    /// before dim d; `mode` is `PAD_*` of `layout.cu`, `value_bits` the constant's bytes.
    pub(super) fn pad_launch(
        &mut self,
        id: NodeId,
        x: BufferId,
        y: BufferId,
        begin: &[i64],
        mode: i32,
        value_bits: u64,
    ) -> Result<()> {
        let (xs, ys) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[y].shape.clone());
        let r = xs.len();
        if r > crate::codegen::MAX_RANK || ys.len() != r || begin.len() != r {
            return Err(CudaError::Unsupported(format!("padding {xs:?} to {ys:?} (rank at most 8)")));
        }
        let n: usize = ys.iter().product();
        if n == 0 {
            return Ok(());
        }
        let mut fields = vec![Field::I64(1); 24];
        for d in 0..r {
            fields[d] = Field::I64(xs[d] as i64);
            fields[8 + d] = Field::I64(ys[d] as i64);
            fields[16 + d] = Field::I64(begin[d]);
        }
        for f in &mut fields[16 + r..] {
            *f = Field::I64(0);
        }
        let w = self.width(x)?;
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(y),
            Arg::I64(n as i64),
            Arg::I32(r as i32),
            Arg::Struct(fields),
            Arg::I32(mode),
            Arg::I64(value_bits as i64),
        ];
        self.kernel(id, KernelFamily::Layout, format!("pad_{w}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    pub(super) fn slice(&mut self, id: NodeId, attrs: Option<&SliceAttrs>) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let (starts, ends, axes, steps) = match attrs {
            Some(a) => (a.starts.clone(), a.ends.clone(), a.axes.clone(), None),
            None => {
                let need = |v: Option<Vec<i64>>, what: &str| {
                    v.ok_or_else(|| CudaError::Invalid(format!("Slice without {what}")))
                };
                (
                    need(self.const_ints(id, 1)?, "starts")?,
                    need(self.const_ints(id, 2)?, "ends")?,
                    self.const_ints(id, 3)?,
                    self.const_ints(id, 4)?,
                )
            }
        };
        let k = starts.len();
        let axes = axes.unwrap_or_else(|| (0..k as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; k]);
        if ends.len() != k || axes.len() != k || steps.len() != k {
            return Err(CudaError::Invalid(format!(
                "starts, ends, axes and steps have lengths {k}, {}, {} and {}",
                ends.len(),
                axes.len(),
                steps.len()
            )));
        }
        let st = row_major(&xs);
        let mut shape = xs.clone();
        let mut strides = st.clone();
        let mut offset = 0i64;
        for i in 0..k {
            let a = Self::axis(axes[i], xs.len())?;
            let (s, step, count) = slice_range(xs[a], starts[i], ends[i], steps[i]).map_err(CudaError::Invalid)?;
            shape[a] = count;
            strides[a] = st[a] * step;
            if count > 0 {
                offset += s * st[a];
            }
        }
        let y = self.out(id, 0)?;
        if self.plan.buffers[y].shape != shape {
            return Err(CudaError::Invalid(format!(
                "the slice is {shape:?}, the node's output is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        self.permute_launch(id, x, y, &shape, &strides, offset)
    }

    pub(super) fn expand(&mut self, id: NodeId) -> Result<()> {
        let x = self.required(id, 0)?;
        let y = self.out(id, 0)?;
        let (xs, ys) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[y].shape.clone());
        let strides = broadcast_strides(&xs, &ys)?;
        self.permute_launch(id, x, y, &ys, &strides, 0)
    }

    pub(super) fn tile(&mut self, id: NodeId) -> Result<()> {
        let x = self.required(id, 0)?;
        let y = self.out(id, 0)?;
        let (xs, ys) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[y].shape.clone());
        if xs.len() != ys.len() || xs.iter().zip(&ys).any(|(&a, &b)| if a == 0 { b != 0 } else { b % a != 0 }) {
            return Err(CudaError::Invalid(format!("{ys:?} is not a tiling of {xs:?}")));
        }
        // A broadcast of the [r0, d0, r1, d1, ...] view, the repeat dims of stride 0.
        let st = row_major(&xs);
        let mut shape = vec![];
        let mut strides = vec![];
        for d in 0..xs.len() {
            let reps = ys[d].checked_div(xs[d]).unwrap_or(0);
            shape.extend([reps, xs[d]]);
            strides.extend([0, st[d]]);
        }
        self.permute_launch(id, x, y, &shape, &strides, 0)
    }

    pub(super) fn split(&mut self, id: NodeId, axis: i64) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let ax = Self::axis(axis, xs.len())?;
        let outer: usize = xs[..ax].iter().product();
        let inner: usize = xs[ax + 1..].iter().product();
        let row = xs[ax] * inner;
        let w = self.width(x)?;
        let mut off = 0usize;
        for slot in 0..self.g.node(id).outputs.len() {
            let y = self.out(id, slot)?;
            let ys = self.plan.buffers[y].shape.clone();
            if ys.len() != xs.len() || (0..xs.len()).any(|d| d != ax && ys[d] != xs[d]) {
                return Err(CudaError::Invalid(format!("output {slot} of {ys:?} is no piece of {xs:?}")));
            }
            let len = ys[ax] * inner;
            if outer * len > 0 {
                let args = vec![
                    Arg::Buffer(x),
                    Arg::Buffer(y),
                    Arg::I64(outer as i64),
                    Arg::I64(len as i64),
                    Arg::I64(row as i64),
                    Arg::I64(off as i64),
                    Arg::I64(len as i64),
                    Arg::I64(0),
                ];
                self.kernel(
                    id,
                    KernelFamily::Layout,
                    format!("copy_rows_{w}"),
                    launch::grid_stride((outer * len) as u64),
                    args,
                );
            }
            off += len;
        }
        if off != row {
            return Err(CudaError::Invalid(format!("the pieces cover {off} of {row} elements per row")));
        }
        Ok(())
    }

    pub(super) fn pad(&mut self, id: NodeId, mode: PadMode, pads: Option<&[i64]>, value: f32) -> Result<()> {
        let x = self.required(id, 0)?;
        let (xs, dt) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let r = xs.len();
        let runtime_value = match self.g.inputs_of(id).get(2).copied().flatten() {
            Some(v) if pads.is_none() && !matches!(self.g.node(v.node).op, Op::Const(_)) => {
                let b = self.required(id, 2)?;
                let buf = &self.plan.buffers[b];
                if buf.dtype != dt || buf.shape.iter().product::<usize>() > 1 {
                    return Err(CudaError::Invalid(format!(
                        "constant_value must be a scalar of {dt}, found {} {:?}",
                        buf.dtype, buf.shape
                    )));
                }
                // An empty value means zero.
                (buf.shape.iter().product::<usize>() == 1 && mode == PadMode::Constant).then_some(b)
            }
            _ => None,
        };
        let (pads, fill) = match pads {
            Some(p) => (p.to_vec(), Tensor::scalar(value)),
            None => {
                let pads = self.const_ints(id, 1)?.ok_or_else(|| CudaError::Invalid("Pad without pads".into()))?;
                // A constant_value computed at run time is read from device memory.
                let fill = match runtime_value {
                    Some(_) => Tensor::scalar(0f32),
                    None => match self.const_input(id, 2)? {
                        Some(t) if !t.is_empty() => t.clone(),
                        _ => Tensor::scalar(0f32),
                    },
                };
                (pads, fill)
            }
        };
        let axes: Vec<usize> = match self.const_ints(id, 3)? {
            Some(a) => a.iter().map(|&a| Self::axis(a, r)).collect::<Result<_>>()?,
            None => (0..r).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return Err(CudaError::Invalid(format!("pads {pads:?} must have 2 entries per padded axis")));
        }
        let mut begin = vec![0i64; r];
        let mut end = vec![0i64; r];
        for (k, &a) in axes.iter().enumerate() {
            begin[a] = pads[k];
            end[a] = pads[k + axes.len()];
        }
        let y = self.out(id, 0)?;
        let ys = self.plan.buffers[y].shape.clone();
        let want: Vec<i64> = (0..r).map(|d| xs[d] as i64 + begin[d] + end[d]).collect();
        if want.len() != ys.len() || want.iter().zip(&ys).any(|(&a, &b)| a != b as i64) {
            return Err(CudaError::Invalid(format!("padding {xs:?} gives {want:?}, the node's output is {ys:?}")));
        }
        if mode != PadMode::Constant && (0..r).any(|d| xs[d] == 0 && ys[d] > 0) {
            return Err(CudaError::Invalid(format!("cannot pad an empty dim in {mode:?} mode")));
        }
        let code = match mode {
            PadMode::Constant => 0,
            PadMode::Reflect => 1,
            PadMode::Edge => 2,
            PadMode::Wrap => 3,
        };
        let bytes = crate::host::tensor_bytes(&fill.cast(dt))?;
        let mut bits = [0u8; 8];
        let len = dt.size().min(8).min(bytes.len());
        bits[..len].copy_from_slice(&bytes[..len]);
        let steps = self.plan.steps.len();
        self.pad_launch(id, x, y, &begin, code, u64::from_ne_bytes(bits))?;
        if let (Some(v), Some(Step { kind: StepKind::Kernel(k), .. })) = (runtime_value, self.plan.steps.get_mut(steps))
        {
            k.kernel = k.kernel.replacen("pad_", "pad_from_", 1);
            if let Some(last) = k.args.last_mut() {
                *last = Arg::Buffer(v);
            }
        }
        Ok(())
    }

    pub(super) fn resize(&mut self, id: NodeId, a: &ResizeAttrs) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let r = xs.len();
        let linear = a.mode != ResizeMode::Nearest;
        // Cubic, antialiased and tf_crop_and_resize Resize go through tap tables (`resize`).
        let mut by_taps = a.mode == ResizeMode::Cubic || (a.antialias && linear);
        let coord_mode = match a.coordinate_transformation_mode {
            CoordTransform::HalfPixel => 0,
            CoordTransform::Asymmetric => 1,
            CoordTransform::AlignCorners => 2,
            CoordTransform::PytorchHalfPixel => 3,
            CoordTransform::HalfPixelSymmetric => 4,
            CoordTransform::TfCropAndResize => {
                by_taps = true;
                0
            }
        };
        let nearest_mode = match a.nearest_mode {
            NearestMode::RoundPreferFloor => 0,
            NearestMode::RoundPreferCeil => 1,
            NearestMode::Floor => 2,
            NearestMode::Ceil => 3,
        };
        let non_empty = |t: Option<&Tensor>| t.filter(|t| !t.is_empty()).cloned();
        let (scales, sizes): (Option<Vec<f64>>, Option<Vec<i64>>) = match &a.inputs {
            ResizeInputs::RoiScalesSizes => (
                non_empty(self.const_input(id, 2)?).map(|t| t.to_f64_vec()),
                non_empty(self.const_input(id, 3)?).map(|t| t.to_i64_vec()),
            ),
            ResizeInputs::Scales => (non_empty(self.const_input(id, 1)?).map(|t| t.to_f64_vec()), None),
            ResizeInputs::Attr(s) => (Some(s.iter().map(|&v| v as f64).collect()), None),
        };
        let axes: Vec<usize> = match &a.axes {
            Some(v) => v.iter().map(|&d| Self::axis(d, r)).collect::<Result<_>>()?,
            None => (0..r).collect(),
        };
        // Scales as the CPU reference computes them.
        let mut scale = vec![1.0f64; r];
        match (&scales, &sizes) {
            (_, Some(sizes)) if sizes.len() == axes.len() => {
                for (i, &d) in axes.iter().enumerate() {
                    scale[d] = sizes[i] as f64 / xs[d] as f64;
                }
                if a.keep_aspect_ratio_policy != AspectRatioPolicy::Stretch {
                    let it = axes.iter().map(|&d| scale[d]);
                    let s = if a.keep_aspect_ratio_policy == AspectRatioPolicy::NotLarger {
                        it.fold(f64::INFINITY, f64::min)
                    } else {
                        it.fold(f64::NEG_INFINITY, f64::max)
                    };
                    for &d in &axes {
                        scale[d] = s;
                    }
                }
            }
            (Some(scales), None) if scales.len() == axes.len() => {
                for (i, &d) in axes.iter().enumerate() {
                    scale[d] = scales[i];
                }
            }
            _ => return Err(CudaError::Invalid("Resize needs constant scales or sizes, one per axis".into())),
        }
        let y = self.out(id, 0)?;
        let ys = self.plan.buffers[y].shape.clone();
        if ys.len() != r || r == 0 {
            return Err(CudaError::Invalid(format!("Resize of {xs:?} to {ys:?}")));
        }
        // The two-axis kernels resize the last two dims; the others must stay as they are.
        let lead = r.saturating_sub(2);
        if by_taps || (0..lead).any(|d| xs[d] != ys[d] || scale[d] != 1.0) {
            let mut roi_of = vec![(0.0f64, 1.0f64); r];
            let roi = match &a.inputs {
                ResizeInputs::RoiScalesSizes => non_empty(self.const_input(id, 1)?).map(|t| t.to_f64_vec()),
                _ => None,
            };
            if let (Some(roi), CoordTransform::TfCropAndResize) = (roi, a.coordinate_transformation_mode) {
                if roi.len() != 2 * axes.len() {
                    return Err(CudaError::Invalid(format!("roi has {} values for {} axes", roi.len(), axes.len())));
                }
                for (i, &d) in axes.iter().enumerate() {
                    roi_of[d] = (roi[i], roi[axes.len() + i]);
                }
            }
            return self.resize_by_taps(id, a, x, y, &scale, &roi_of, &axes);
        }
        let sfx = self.float_suffix(x, "resize")?;
        let (ih, oh, scale_h) = if r >= 2 { (xs[r - 2], ys[r - 2], scale[r - 2]) } else { (1, 1, 1.0) };
        let args = launch::ResizeArgs {
            planes: xs[..lead].iter().product::<usize>() as i64,
            ih: ih as i64,
            iw: xs[r - 1] as i64,
            oh: oh as i64,
            ow: ys[r - 1] as i64,
            scale_h,
            scale_w: scale[r - 1],
            coord_mode,
            nearest_mode,
        };
        let n: usize = ys.iter().product();
        if n == 0 {
            return Ok(());
        }
        if xs.iter().product::<usize>() == 0 {
            return Err(CudaError::Invalid(format!("Resize of the empty {xs:?} to {ys:?}")));
        }
        let mut fields: Vec<Field> = [args.planes, args.ih, args.iw, args.oh, args.ow].map(Field::I64).to_vec();
        fields.extend([Field::F64(args.scale_h), Field::F64(args.scale_w)]);
        fields.extend([Field::I64(args.coord_mode), Field::I64(args.nearest_mode)]);
        let name = format!("{}_{sfx}", if linear { "resize_linear" } else { "resize_nearest" });
        let args = vec![Arg::Buffer(x), Arg::Buffer(y), Arg::Struct(fields)];
        self.kernel(id, KernelFamily::Resize, name, launch::grid_stride(n as u64), args);
        Ok(())
    }
}
