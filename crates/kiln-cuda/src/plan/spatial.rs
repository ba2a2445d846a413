//! Spatial ops: DepthToSpace, SpaceToDepth and CenterCropPad as strided copies and pads of
//! `kernels/layout.cu`; ConvTranspose, GridSample, RoiAlign, Col2Im and AffineGrid through the
//! direct kernels of `kernels/spatial.cu`, which also computes the window functions.

use super::data::row_major;
use super::*;
use kiln_ir::ops::layout::DepthToSpaceMode;
use kiln_ir::ops::linalg::ConvTransposeAttrs;
use kiln_ir::ops::signal::WindowFunction;
use kiln_ir::ops::spatial::{GridPadding, GridSampleMode};

impl Planner<'_> {
    /// DepthToSpace and SpaceToDepth on `[N, C, H, W]`: one strided copy each, reading the
    /// input through the 6-D view the ONNX definition reshapes it to.
    pub(super) fn depth_space(&mut self, id: NodeId, to_space: bool, b: usize, mode: DepthToSpaceMode) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let [n, c, h, w] = xs[..] else {
            return Err(CudaError::Invalid(format!("the input must be [N, C, H, W], found {xs:?}")));
        };
        if b == 0 {
            return Err(CudaError::Invalid("blocksize 0".into()));
        }
        let (view, perm, want) = if to_space {
            if c % (b * b) != 0 {
                return Err(CudaError::Invalid(format!("{c} channels do not split into blocks of {b} x {b}")));
            }
            let cc = c / (b * b);
            match mode {
                // [N, b, b, C', H, W] -> [N, C', H, b, W, b]
                DepthToSpaceMode::Dcr => (vec![n, b, b, cc, h, w], [0, 3, 4, 1, 5, 2], vec![n, cc, h * b, w * b]),
                // [N, C', b, b, H, W] -> [N, C', H, b, W, b]
                DepthToSpaceMode::Crd => (vec![n, cc, b, b, h, w], [0, 1, 4, 2, 5, 3], vec![n, cc, h * b, w * b]),
            }
        } else {
            if h % b != 0 || w % b != 0 {
                return Err(CudaError::Invalid(format!("{h} x {w} does not split into blocks of {b} x {b}")));
            }
            // [N, C, H', b, W', b] -> [N, b, b, C, H', W']
            (vec![n, c, h / b, b, w / b, b], [0, 3, 5, 1, 2, 4], vec![n, c * b * b, h / b, w / b])
        };
        let y = self.out(id, 0)?;
        if self.plan.buffers[y].shape != want {
            return Err(CudaError::Invalid(format!(
                "the output should be {want:?}, the node's is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        let st = row_major(&view);
        let shape: Vec<usize> = perm.iter().map(|&p| view[p]).collect();
        let strides: Vec<i64> = perm.iter().map(|&p| st[p]).collect();
        self.permute_launch(id, x, y, &shape, &strides, 0)
    }

    /// CenterCropPad: each listed axis is cropped or zero-padded about its centre to the size in
    /// input 1 (constant), one pad launch (a negative begin crops).
    pub(super) fn center_crop_pad(&mut self, id: NodeId, axes: Option<&[i64]>) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let r = xs.len();
        let sizes = self.const_ints(id, 1)?.ok_or_else(|| CudaError::Invalid("CenterCropPad without shape".into()))?;
        let axes: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&a| Self::axis(a, r)).collect::<Result<_>>()?,
            None => (0..r).collect(),
        };
        if sizes.len() != axes.len() {
            return Err(CudaError::Invalid(format!("shape {sizes:?} for axes {axes:?}")));
        }
        let mut begin = vec![0i64; r];
        let mut want = xs.clone();
        for (&a, &s) in axes.iter().zip(&sizes) {
            if s < 0 {
                return Err(CudaError::Invalid(format!("a negative size {s}")));
            }
            let dim = xs[a] as i64;
            // A crop starts (dim - s) / 2 in; a pad puts (s - dim) / 2 cells before.
            begin[a] = if s < dim { -((dim - s) / 2) } else { (s - dim) / 2 };
            want[a] = s as usize;
        }
        let y = self.out(id, 0)?;
        if self.plan.buffers[y].shape != want {
            return Err(CudaError::Invalid(format!(
                "the output should be {want:?}, the node's is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        self.pad_launch(id, x, y, &begin, 0, 0)
    }

    /// ConvTranspose in gather form over one to three spatial dims, with groups, strides,
    /// dilations, padding (explicit, auto or from output_shape), output_padding and bias.
    pub(super) fn conv_transpose(&mut self, id: NodeId, attrs: &ConvTransposeAttrs) -> Result<()> {
        let x = self.required(id, 0)?;
        let w = self.required(id, 1)?;
        let b = self.input(id, 2)?;
        let (xs, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let ws = self.plan.buffers[w].shape.clone();
        let sfx = self.float_suffix(x, "conv_transpose")?;
        if !(3..=5).contains(&xs.len()) || ws.len() != xs.len() {
            return Err(CudaError::Unsupported(format!(
                "ConvTranspose of {xs:?} with a weight of {ws:?} (the kernel takes 1 to 3 spatial dims)"
            )));
        }
        let group = attrs.group;
        let c = xs[1];
        if group == 0 || c % group != 0 || ws[0] != c {
            return Err(CudaError::Invalid(format!(
                "the weight {ws:?} does not fit {c} input channels in {group} groups"
            )));
        }
        let m = ws[1] * group;
        for (t, what) in [(Some(w), "W"), (b, "B")] {
            if let Some(t) = t {
                if self.plan.buffers[t].dtype != dtype {
                    return Err(CudaError::Unsupported(format!(
                        "{what} of {} with X of {dtype}",
                        self.plan.buffers[t].dtype
                    )));
                }
            }
        }
        if let Some(bb) = b {
            if self.plan.buffers[bb].shape.iter().product::<usize>() != m {
                return Err(CudaError::Invalid(format!(
                    "B must hold the {m} output channels, found {:?}",
                    self.plan.buffers[bb].shape
                )));
            }
        }
        let dims = attrs.dims(&xs[2..], &ws[2..]).map_err(CudaError::Invalid)?;
        let y = self.out(id, 0)?;
        let ys = self.plan.buffers[y].shape.clone();
        let want: Vec<usize> = [xs[0], m].into_iter().chain(dims.iter().map(|d| d.output)).collect();
        if ys != want {
            return Err(CudaError::Invalid(format!("the output should be {want:?}, the node's is {ys:?}")));
        }
        let mut a = launch::ConvTArgs {
            n: xs[0] as i64,
            c: c as i64,
            m: m as i64,
            group: group as i64,
            input: [1; 3],
            output: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            dilation: [1; 3],
            pad_begin: [0; 3],
        };
        let lead = 3 - dims.len();
        for (k, d) in dims.iter().enumerate() {
            a.input[lead + k] = d.input as i64;
            a.output[lead + k] = d.output as i64;
            a.kernel[lead + k] = d.kernel as i64;
            a.stride[lead + k] = d.stride as i64;
            a.dilation[lead + k] = d.dilation as i64;
            a.pad_begin[lead + k] = d.pad_begin;
        }
        let n: usize = ys.iter().product();
        if n == 0 {
            return Ok(());
        }
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(w),
            b.map_or(Arg::Null, Arg::Buffer),
            Arg::Buffer(y),
            Arg::Struct(a.fields()),
        ];
        self.kernel(id, KernelFamily::Spatial, format!("conv_transpose_{sfx}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    /// GridSample over one to three spatial dims.
    pub(super) fn grid_sample(
        &mut self,
        id: NodeId,
        mode: GridSampleMode,
        padding: GridPadding,
        align_corners: bool,
    ) -> Result<()> {
        let x = self.required(id, 0)?;
        let grid = self.required(id, 1)?;
        let (xs, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let gs = self.plan.buffers[grid].shape.clone();
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(CudaError::Unsupported(format!("no grid_sample kernel for {dtype}")));
        }
        if self.plan.buffers[grid].dtype != dtype {
            return Err(CudaError::Unsupported(format!(
                "a grid of {} with X of {dtype}; cast it first",
                self.plan.buffers[grid].dtype
            )));
        }
        let r = xs.len().saturating_sub(2);
        if !(1..=3).contains(&r) || gs.len() != xs.len() || gs[0] != xs[0] || gs[gs.len() - 1] != r {
            return Err(CudaError::Unsupported(format!(
                "GridSample of X {xs:?} with grid {gs:?} (the kernel takes 1 to 3 spatial dims)"
            )));
        }
        let y = self.out(id, 0)?;
        let want: Vec<usize> = xs[..2].iter().chain(&gs[1..gs.len() - 1]).copied().collect();
        if self.plan.buffers[y].shape != want {
            return Err(CudaError::Invalid(format!(
                "the output should be {want:?}, the node's is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        let n: usize = want.iter().product();
        if n == 0 {
            return Ok(());
        }
        if xs[2..].contains(&0) {
            return Err(CudaError::Invalid(format!("cannot sample an empty image of shape {xs:?}")));
        }
        let mut a = launch::GridSampleArgs {
            n: xs[0] as i64,
            c: xs[1] as i64,
            input: [1; 3],
            output: [1; 3],
            rank: r as i64,
            mode: match mode {
                GridSampleMode::Linear => 0,
                GridSampleMode::Nearest => 1,
                GridSampleMode::Cubic => 2,
            },
            padding: match padding {
                GridPadding::Zeros => 0,
                GridPadding::Border => 1,
                GridPadding::Reflection => 2,
            },
            align_corners,
        };
        for k in 0..r {
            a.input[3 - r + k] = xs[2 + k] as i64;
            a.output[3 - r + k] = gs[1 + k] as i64;
        }
        let sfx = crate::codegen::dtype_suffix(dtype)?;
        let args = vec![Arg::Buffer(x), Arg::Buffer(grid), Arg::Buffer(y), Arg::Struct(a.fields())];
        self.kernel(id, KernelFamily::Spatial, format!("grid_sample_{sfx}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    /// RoiAlign of `X [n, c, h, w]` over `rois [r, 4]` of X's type and i64 batch indices; a
    /// batch index outside `[0, n)` fails the run.
    pub(super) fn roi_align(&mut self, id: NodeId, p: RoiAlignParams) -> Result<()> {
        let x = self.required(id, 0)?;
        let rois = self.required(id, 1)?;
        let bidx = self.required(id, 2)?;
        let (xs, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let [n, c, h, w] = xs[..] else {
            return Err(CudaError::Invalid(format!("X must be [N, C, H, W], found {xs:?}")));
        };
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(CudaError::Unsupported(format!("no roi_align kernel for {dtype}")));
        }
        if self.plan.buffers[rois].dtype != dtype || self.plan.buffers[bidx].dtype != DType::I64 {
            return Err(CudaError::Unsupported(format!(
                "rois of {} and batch indices of {} with X of {dtype} (the kernel takes X's type and i64)",
                self.plan.buffers[rois].dtype, self.plan.buffers[bidx].dtype
            )));
        }
        let r = self.plan.buffers[bidx].shape.iter().product::<usize>();
        if self.plan.buffers[rois].shape != [r, 4] {
            return Err(CudaError::Invalid(format!(
                "rois must be [{r}, 4], found {:?}",
                self.plan.buffers[rois].shape
            )));
        }
        let y = self.out(id, 0)?;
        let want = vec![r, c, p.oh, p.ow];
        if self.plan.buffers[y].shape != want {
            return Err(CudaError::Invalid(format!(
                "the output should be {want:?}, the node's is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        let total: usize = want.iter().product();
        if total == 0 {
            return Ok(());
        }
        let name = format!("{}.batch_index_error", self.g.node(id).name);
        let err = self.temp(name, DType::I32, vec![1]);
        let message = format!("RoiAlign {}: a batch index is outside [0, {n})", self.g.node(id).name);
        self.plan.error_flags.push((err, message));
        let mut fields: Vec<Field> =
            [n, c, h, w, r, p.oh, p.ow, p.sampling_ratio].map(|v| Field::I64(v as i64)).to_vec();
        fields.extend([Field::I64(p.max as i64), Field::I64(p.half_pixel as i64), Field::F64(p.spatial_scale as f64)]);
        let sfx = crate::codegen::dtype_suffix(dtype)?;
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(rois),
            Arg::Buffer(bidx),
            Arg::Buffer(y),
            Arg::Buffer(err),
            Arg::Struct(fields),
        ];
        self.kernel(id, KernelFamily::Spatial, format!("roi_align_{sfx}"), launch::grid_stride(total as u64), args);
        Ok(())
    }

    /// Col2Im over one to three image dims; image_shape and block_shape must be constants.
    pub(super) fn col2im(&mut self, id: NodeId, dilations: &[usize], pads: &[usize], strides: &[usize]) -> Result<()> {
        let x = self.required(id, 0)?;
        let (xs, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let image = self.const_ints(id, 1)?.ok_or_else(|| CudaError::Invalid("Col2Im without image_shape".into()))?;
        let block = self.const_ints(id, 2)?.ok_or_else(|| CudaError::Invalid("Col2Im without block_shape".into()))?;
        let k = image.len();
        if !(1..=3).contains(&k) || block.len() != k || image.iter().chain(&block).any(|&v| v <= 0) {
            return Err(CudaError::Unsupported(format!(
                "Col2Im with image_shape {image:?} and block_shape {block:?} (the kernel takes 1 to 3 dims)"
            )));
        }
        let get = |v: &[usize], i: usize, d: usize| if v.is_empty() { d } else { v.get(i).copied().unwrap_or(d) };
        let bprod: i64 = block.iter().product();
        let [n, cb, l] = xs[..] else {
            return Err(CudaError::Invalid(format!("input must be [N, C * {bprod}, L], found {xs:?}")));
        };
        if cb as i64 % bprod != 0 {
            return Err(CudaError::Invalid(format!("input must be [N, C * {bprod}, L], found {xs:?}")));
        }
        let mut a = launch::Col2ImArgs {
            n: n as i64,
            c: cb as i64 / bprod,
            l: l as i64,
            image: [1; 3],
            block: [1; 3],
            counts: [1; 3],
            stride: [1; 3],
            dilation: [1; 3],
            pad_begin: [0; 3],
        };
        let lead = 3 - k;
        let mut blocks = 1i64;
        for i in 0..k {
            let (d, s, pb, pe) = (get(dilations, i, 1), get(strides, i, 1), get(pads, i, 0), get(pads, k + i, 0));
            if d == 0 || s == 0 {
                return Err(CudaError::Invalid("strides and dilations must be positive".into()));
            }
            let span = d as i64 * (block[i] - 1) + 1;
            let padded = image[i] + (pb + pe) as i64;
            if padded < span {
                return Err(CudaError::Invalid(format!("the block does not fit the padded image along axis {i}")));
            }
            let count = (padded - span) / s as i64 + 1;
            blocks *= count;
            a.image[lead + i] = image[i];
            a.block[lead + i] = block[i];
            a.counts[lead + i] = count;
            a.stride[lead + i] = s as i64;
            a.dilation[lead + i] = d as i64;
            a.pad_begin[lead + i] = pb as i64;
        }
        if blocks != l as i64 {
            return Err(CudaError::Invalid(format!("input has {l} blocks, the shapes give {blocks}")));
        }
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(CudaError::Unsupported(format!("no col2im kernel for {dtype}")));
        }
        let y = self.out(id, 0)?;
        let want: Vec<usize> = [n, cb / bprod as usize].into_iter().chain(image.iter().map(|&v| v as usize)).collect();
        if self.plan.buffers[y].shape != want {
            return Err(CudaError::Invalid(format!(
                "the output should be {want:?}, the node's is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        let total: usize = want.iter().product();
        if total == 0 {
            return Ok(());
        }
        let sfx = crate::codegen::dtype_suffix(dtype)?;
        let args = vec![Arg::Buffer(x), Arg::Buffer(y), Arg::Struct(a.fields())];
        self.kernel(id, KernelFamily::Spatial, format!("col2im_{sfx}"), launch::grid_stride(total as u64), args);
        Ok(())
    }

    /// AffineGrid for a constant size of rank 4 or 5.
    pub(super) fn affine_grid(&mut self, id: NodeId, align_corners: bool) -> Result<()> {
        let theta = self.required(id, 0)?;
        let dtype = self.plan.buffers[theta].dtype;
        let size = self.const_ints(id, 1)?.ok_or_else(|| CudaError::Invalid("AffineGrid without size".into()))?;
        if !(size.len() == 4 || size.len() == 5) || size.iter().any(|&s| s <= 0) {
            return Err(CudaError::Invalid(format!("size must be [N, C, H, W] or [N, C, D, H, W], found {size:?}")));
        }
        let r = size.len() - 2;
        let n = size[0] as usize;
        if self.plan.buffers[theta].shape != [n, r, r + 1] {
            return Err(CudaError::Invalid(format!(
                "theta must be [{n}, {r}, {}], found {:?}",
                r + 1,
                self.plan.buffers[theta].shape
            )));
        }
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(CudaError::Unsupported(format!("no affine_grid kernel for {dtype}")));
        }
        let y = self.out(id, 0)?;
        let mut want = vec![n];
        want.extend(size[2..].iter().map(|&v| v as usize));
        want.push(r);
        if self.plan.buffers[y].shape != want {
            return Err(CudaError::Invalid(format!(
                "the output should be {want:?}, the node's is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        let mut dims = [1i64; 3];
        dims[..r].copy_from_slice(&size[2..]);
        let fields = [n as i64, r as i64, dims[0], dims[1], dims[2], align_corners as i64].map(Field::I64).to_vec();
        let total: usize = want.iter().product();
        let sfx = crate::codegen::dtype_suffix(dtype)?;
        let args = vec![Arg::Buffer(theta), Arg::Buffer(y), Arg::Struct(fields)];
        self.kernel(id, KernelFamily::Spatial, format!("affine_grid_{sfx}"), launch::grid_stride(total as u64), args);
        Ok(())
    }
}

/// RoiAlign's attributes (`RoiArgs` in `spatial.cu` adds the shapes).
#[derive(Clone, Copy)]
pub(super) struct RoiAlignParams {
    pub max: bool,
    pub oh: usize,
    pub ow: usize,
    pub sampling_ratio: usize,
    pub spatial_scale: f32,
    pub half_pixel: bool,
}

impl Planner<'_> {
    /// HannWindow, HammingWindow and BlackmanWindow of a constant size.
    pub(super) fn window(&mut self, id: NodeId, function: WindowFunction, periodic: bool) -> Result<()> {
        let size = match self.const_ints(id, 0)?.as_deref() {
            Some(&[s]) if s >= 0 => s as usize,
            other => return Err(CudaError::Invalid(format!("size must be one non-negative value, found {other:?}"))),
        };
        let y = self.out(id, 0)?;
        let dtype = self.plan.buffers[y].dtype;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(CudaError::Unsupported(format!("no window kernel for {dtype}")));
        }
        if self.plan.buffers[y].shape != [size] {
            return Err(CudaError::Invalid(format!(
                "the output should be [{size}], the node's is {:?}",
                self.plan.buffers[y].shape
            )));
        }
        if size == 0 {
            return Ok(());
        }
        let n = if periodic { size } else { size - 1 };
        let code = match function {
            WindowFunction::Hann => 0,
            WindowFunction::Hamming => 1,
            WindowFunction::Blackman => 2,
        };
        let sfx = crate::codegen::dtype_suffix(dtype)?;
        let args = vec![Arg::Buffer(y), Arg::I64(size as i64), Arg::I64(n as i64), Arg::I32(code)];
        self.kernel(id, KernelFamily::Spatial, format!("window_{sfx}"), launch::grid_stride(size as u64), args);
        Ok(())
    }
}
