//! Indexing ops and the training losses through `kernels/index.cu`: GatherElements, GatherND,
//! ScatterElements (and the old Scatter), ScatterND, Trilu, EyeLike, OneHot, CumSum, TopK,
//! Hardmax, NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.
//!
//! Indices of another integer type (or OneHot's float indices) are cast to i64 first. An index
//! out of range raises an error flag that fails the run, as Gather's does. Counts and axes
//! that shape the output or the launch (TopK's k, CumSum's axis, OneHot's depth) must be
//! constants; Trilu's k may be computed at run time.

use super::data::row_major;
use super::*;
use crate::kernels::INDEX_VALUE_TYPES;
use kiln_ir::ops::layout::ScatterReduction;
use kiln_ir::ops::loss::LossReduction;
use kiln_ir::ops::LossOp;

/// A `Strided` struct of `index.cu`: `dims` then `strides`, each padded to the kernel's rank.
fn strided_fields(dims: &[usize], strides: &[i64]) -> Vec<Field> {
    let mut f = vec![Field::I64(1); 2 * crate::codegen::MAX_RANK];
    for (d, (&n, &s)) in dims.iter().zip(strides).enumerate() {
        f[d] = Field::I64(n as i64);
        f[crate::codegen::MAX_RANK + d] = Field::I64(s);
    }
    for x in &mut f[crate::codegen::MAX_RANK + dims.len()..] {
        *x = Field::I64(0);
    }
    f
}

fn scatter_code(r: ScatterReduction) -> i32 {
    match r {
        ScatterReduction::None => 0,
        ScatterReduction::Add => 1,
        ScatterReduction::Mul => 2,
        ScatterReduction::Max => 3,
        ScatterReduction::Min => 4,
    }
}

impl Planner<'_> {
    /// Lowers the ops of this module; `node` sends every one of them here.
    pub(super) fn index_op(&mut self, id: NodeId, op: &Op) -> Result<()> {
        match op {
            Op::Layout(LayoutOp::GatherElements { axis }) => self.gather_elements(id, *axis),
            Op::Layout(LayoutOp::GatherND { batch_dims }) => self.gather_nd(id, *batch_dims),
            Op::Layout(LayoutOp::ScatterElements { axis, reduction }) => self.scatter_elements(id, *axis, *reduction),
            Op::Layout(LayoutOp::ScatterND { reduction }) => self.scatter_nd(id, *reduction),
            Op::Layout(LayoutOp::Trilu { upper }) => self.trilu(id, *upper),
            Op::Layout(LayoutOp::EyeLike { k, .. }) => self.eye_like(id, *k),
            Op::Layout(LayoutOp::OneHot { axis }) => self.one_hot(id, *axis),
            Op::Reduce(ReduceOp::CumSum { exclusive, reverse }) => self.cum_sum(id, *exclusive, *reverse),
            Op::Reduce(ReduceOp::TopK { axis, largest, k, .. }) => self.top_k(id, *axis, *largest, *k),
            Op::Norm(NormOp::Hardmax { axis, coerce_2d }) => self.hardmax(id, *axis, *coerce_2d),
            Op::Loss(l) => self.loss(id, l),
            other => Err(CudaError::Invalid(format!("{} is not an indexing op", other.name()))),
        }
    }

    /// `b` as i64 indices: itself, or a cast of it into a new buffer.
    fn as_i64(&mut self, id: NodeId, b: BufferId, what: &str) -> Result<BufferId> {
        let (dt, shape) = (self.plan.buffers[b].dtype, self.plan.buffers[b].shape.clone());
        if dt == DType::I64 {
            return Ok(b);
        }
        if dt == DType::Bool || !(dt.is_int() || matches!(dt, DType::F32 | DType::F16 | DType::BF16 | DType::F64)) {
            return Err(CudaError::Unsupported(format!("{what} of {dt} (integer indices expected)")));
        }
        let k = elementwise_kernel(&Expr::op(ElementwiseOp::Cast { to: DType::I64, saturate: false }, 1), &[dt])?;
        let name = format!("{}.{what}_i64", self.g.node(id).name);
        let t = self.temp(name, DType::I64, shape);
        self.launch_generated(id, k, &[b], t)?;
        Ok(t)
    }

    /// A new error flag that fails the run with `message`.
    fn error_flag(&mut self, id: NodeId, message: String) -> BufferId {
        let name = format!("{}.index_error", self.g.node(id).name);
        let err = self.temp(name, DType::I32, vec![1]);
        self.plan.error_flags.push((err, message));
        err
    }

    /// The suffix of a value kernel (scatters, CumSum, TopK) for `dt`.
    fn value_suffix(dt: DType, what: &str) -> Result<&'static str> {
        if INDEX_VALUE_TYPES.contains(&dt) {
            crate::codegen::dtype_suffix(dt)
        } else {
            Err(CudaError::Unsupported(format!("no {what} kernel for {dt}")))
        }
    }

    /// Copies `x` into `y` (same shape, contiguous).
    fn copy_into(&mut self, id: NodeId, x: BufferId, y: BufferId) -> Result<()> {
        let shape = self.plan.buffers[x].shape.clone();
        if shape.is_empty() {
            return self.permute_launch(id, x, y, &[1], &[1], 0);
        }
        self.permute_launch(id, x, y, &shape, &row_major(&shape), 0)
    }

    fn gather_elements(&mut self, id: NodeId, axis: i64) -> Result<()> {
        let x = self.required(id, 0)?;
        let idx = self.required(id, 1)?;
        let idx = self.as_i64(id, idx, "indices")?;
        let (xs, is) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[idx].shape.clone());
        let r = xs.len();
        let ax = Self::axis(axis, r)?;
        if is.len() != r || (0..r).any(|d| d != ax && is[d] > xs[d]) {
            return Err(CudaError::Invalid(format!("indices of shape {is:?} do not fit data of shape {xs:?}")));
        }
        if r > crate::codegen::MAX_RANK {
            return Err(CudaError::Unsupported(format!("GatherElements of rank {r} (the kernel takes 8)")));
        }
        let w = self.width(x)?;
        let y = self.out(id, 0)?;
        let n: usize = is.iter().product();
        if n == 0 {
            return Ok(());
        }
        let mut st = row_major(&xs);
        let axis_stride = st[ax];
        st[ax] = 0;
        let message = format!("GatherElements {}: an index is outside [-{}, {})", self.g.node(id).name, xs[ax], xs[ax]);
        let err = self.error_flag(id, message);
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(idx),
            Arg::Buffer(y),
            Arg::I64(n as i64),
            Arg::I32(r as i32),
            Arg::Struct(strided_fields(&is, &st)),
            Arg::I64(xs[ax] as i64),
            Arg::I64(axis_stride),
            Arg::Buffer(err),
        ];
        self.kernel(id, KernelFamily::Index, format!("gather_elements_{w}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    /// GatherND and ScatterND's geometry: (tuple length k, chunk, tuples per batch, tuple
    /// count).
    fn nd_geometry(xs: &[usize], is: &[usize], batch_dims: usize) -> Result<(usize, usize, usize, usize)> {
        let Some(&k) = is.last() else {
            return Err(CudaError::Invalid("indices must have rank 1 or more".into()));
        };
        if batch_dims >= is.len() || batch_dims + k > xs.len() || xs[..batch_dims] != is[..batch_dims] {
            return Err(CudaError::Invalid(format!(
                "indices of shape {is:?} do not fit data of shape {xs:?} with batch_dims {batch_dims}"
            )));
        }
        if k > crate::codegen::MAX_RANK {
            return Err(CudaError::Unsupported(format!("index tuples of length {k} (the kernel takes 8)")));
        }
        let chunk: usize = xs[batch_dims + k..].iter().product();
        let tuples: usize = is[batch_dims..is.len() - 1].iter().product();
        let count: usize = is[..is.len() - 1].iter().product();
        Ok((k, chunk, tuples, count))
    }

    fn gather_nd(&mut self, id: NodeId, batch_dims: usize) -> Result<()> {
        let x = self.required(id, 0)?;
        let idx = self.required(id, 1)?;
        let idx = self.as_i64(id, idx, "indices")?;
        let (xs, is) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[idx].shape.clone());
        let (k, chunk, tuples, count) = Self::nd_geometry(&xs, &is, batch_dims)?;
        let w = self.width(x)?;
        let y = self.out(id, 0)?;
        let n = count * chunk;
        if n == 0 {
            return Ok(());
        }
        let st = row_major(&xs);
        let batch_stride: usize = xs[batch_dims..].iter().product();
        let message = format!("GatherND {}: an index is outside its dim", self.g.node(id).name);
        let err = self.error_flag(id, message);
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(idx),
            Arg::Buffer(y),
            Arg::I64(n as i64),
            Arg::I64(chunk as i64),
            Arg::I32(k as i32),
            Arg::I64(tuples as i64),
            Arg::I64(batch_stride as i64),
            Arg::Struct(strided_fields(&xs[batch_dims..batch_dims + k], &st[batch_dims..batch_dims + k])),
            Arg::Buffer(err),
        ];
        self.kernel(id, KernelFamily::Index, format!("gather_nd_{w}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    /// The value-kernel suffix of a scatter's data: a bool tensor scatters as u8 when updates
    /// replace values.
    fn scatter_suffix(&self, x: BufferId, upd: BufferId, reduction: ScatterReduction) -> Result<&'static str> {
        let (dt, ut) = (self.plan.buffers[x].dtype, self.plan.buffers[upd].dtype);
        if dt != ut {
            return Err(CudaError::Invalid(format!("updates of {ut} for data of {dt}")));
        }
        if dt == DType::Bool && reduction == ScatterReduction::None {
            return Ok("u8");
        }
        Self::value_suffix(dt, &format!("scatter with reduction {reduction:?}"))
    }

    fn scatter_elements(&mut self, id: NodeId, axis: i64, reduction: ScatterReduction) -> Result<()> {
        let x = self.required(id, 0)?;
        let idx = self.required(id, 1)?;
        let upd = self.required(id, 2)?;
        let idx = self.as_i64(id, idx, "indices")?;
        let (xs, is) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[idx].shape.clone());
        let r = xs.len();
        let ax = Self::axis(axis, r)?;
        if self.plan.buffers[upd].shape != is {
            return Err(CudaError::Invalid(format!(
                "updates of shape {:?} for indices of shape {is:?}",
                self.plan.buffers[upd].shape
            )));
        }
        if is.len() != r || (0..r).any(|d| d != ax && is[d] > xs[d]) {
            return Err(CudaError::Invalid(format!("indices of shape {is:?} do not fit data of shape {xs:?}")));
        }
        if r > crate::codegen::MAX_RANK {
            return Err(CudaError::Unsupported(format!("ScatterElements of rank {r} (the kernel takes 8)")));
        }
        let sfx = self.scatter_suffix(x, upd, reduction)?;
        let y = self.out(id, 0)?;
        self.copy_into(id, x, y)?;
        let (outer, len, inner) = (is[..ax].iter().product::<usize>(), is[ax], is[ax + 1..].iter().product::<usize>());
        if outer * len * inner == 0 {
            return Ok(());
        }
        let mut st = row_major(&xs);
        let axis_stride = st[ax];
        st[ax] = 0;
        let message =
            format!("ScatterElements {}: an index is outside [-{}, {})", self.g.node(id).name, xs[ax], xs[ax]);
        let err = self.error_flag(id, message);
        let args = vec![
            Arg::Buffer(idx),
            Arg::Buffer(upd),
            Arg::Buffer(y),
            Arg::I64(outer as i64),
            Arg::I64(len as i64),
            Arg::I64(inner as i64),
            Arg::I32(r as i32),
            Arg::Struct(strided_fields(&is, &st)),
            Arg::I64(xs[ax] as i64),
            Arg::I64(axis_stride),
            Arg::I32(scatter_code(reduction)),
            Arg::Buffer(err),
        ];
        let config = launch::grid_stride((outer * inner) as u64);
        self.kernel(id, KernelFamily::Index, format!("scatter_elements_{sfx}"), config, args);
        Ok(())
    }

    fn scatter_nd(&mut self, id: NodeId, reduction: ScatterReduction) -> Result<()> {
        let x = self.required(id, 0)?;
        let idx = self.required(id, 1)?;
        let upd = self.required(id, 2)?;
        let idx = self.as_i64(id, idx, "indices")?;
        let (xs, is) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[idx].shape.clone());
        let (k, chunk, _, count) = Self::nd_geometry(&xs, &is, 0)?;
        let want: Vec<usize> = is[..is.len() - 1].iter().chain(&xs[k..]).copied().collect();
        if self.plan.buffers[upd].shape != want {
            return Err(CudaError::Invalid(format!(
                "updates of shape {:?}, expected {want:?}",
                self.plan.buffers[upd].shape
            )));
        }
        let sfx = self.scatter_suffix(x, upd, reduction)?;
        let y = self.out(id, 0)?;
        self.copy_into(id, x, y)?;
        if chunk * count == 0 {
            return Ok(());
        }
        let st = row_major(&xs);
        let message = format!("ScatterND {}: an index is outside its dim", self.g.node(id).name);
        let err = self.error_flag(id, message);
        let args = vec![
            Arg::Buffer(idx),
            Arg::Buffer(upd),
            Arg::Buffer(y),
            Arg::I64(chunk as i64),
            Arg::I64(count as i64),
            Arg::I32(k as i32),
            Arg::Struct(strided_fields(&xs[..k], &st[..k])),
            Arg::I32(scatter_code(reduction)),
            Arg::Buffer(err),
        ];
        self.kernel(id, KernelFamily::Index, format!("scatter_nd_{sfx}"), launch::grid_stride(chunk as u64), args);
        Ok(())
    }

    /// One value from a constant input (`what` names it in errors).
    fn const_scalar(&self, id: NodeId, slot: usize, what: &str) -> Result<Option<i64>> {
        match self.const_ints(id, slot)? {
            None => Ok(None),
            Some(v) if v.len() == 1 => Ok(Some(v[0])),
            Some(v) => Err(CudaError::Invalid(format!("{what} must hold one value, found {v:?}"))),
        }
    }

    fn trilu(&mut self, id: NodeId, upper: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        // k only moves the diagonal, so a k computed at run time is read by the kernel.
        let (k_buf, k) = match self.const_scalar(id, 1, "k") {
            Ok(k) => (None, k.unwrap_or(0)),
            Err(CudaError::Unsupported(_)) => {
                let kb = self.required(id, 1)?;
                let b = &self.plan.buffers[kb];
                if b.dtype != DType::I64 || b.shape.iter().product::<usize>() != 1 {
                    return Err(CudaError::Invalid(format!("k of {}{:?} (one i64 expected)", b.dtype, b.shape)));
                }
                (Some(kb), 0)
            }
            Err(e) => return Err(e),
        };
        let xs = self.plan.buffers[x].shape.clone();
        if xs.len() < 2 {
            return Err(CudaError::Invalid(format!("Trilu of shape {xs:?} (rank 2 or more expected)")));
        }
        let (rows, cols) = (xs[xs.len() - 2], xs[xs.len() - 1]);
        let w = self.width(x)?;
        let y = self.out(id, 0)?;
        let n: usize = xs.iter().product();
        if n == 0 {
            return Ok(());
        }
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(y),
            Arg::I64(n as i64),
            Arg::I64(rows as i64),
            Arg::I64(cols as i64),
            k_buf.map_or(Arg::Null, Arg::Buffer),
            Arg::I64(k),
            Arg::I32(upper as i32),
        ];
        self.kernel(id, KernelFamily::Index, format!("trilu_{w}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    fn eye_like(&mut self, id: NodeId, k: i64) -> Result<()> {
        let x = self.required(id, 0)?;
        let xs = self.plan.buffers[x].shape.clone();
        let &[rows, cols] = xs.as_slice() else {
            return Err(CudaError::Invalid(format!("EyeLike of shape {xs:?} (2-D expected)")));
        };
        let y = self.out(id, 0)?;
        let dt = self.plan.buffers[y].dtype;
        let w = self.width(y)?;
        let n = rows * cols;
        if n == 0 {
            return Ok(());
        }
        let one = Tensor::from_vec(vec![1], vec![1f32]).map_err(|e| CudaError::Invalid(e.to_string()))?.cast(dt);
        let bytes = crate::host::tensor_bytes(&one)?;
        let mut bits = [0u8; 8];
        let len = dt.size().min(8).min(bytes.len());
        bits[..len].copy_from_slice(&bytes[..len]);
        let args = vec![
            Arg::Buffer(y),
            Arg::I64(n as i64),
            Arg::I64(cols as i64),
            Arg::I64(k),
            Arg::I64(u64::from_ne_bytes(bits) as i64),
        ];
        self.kernel(id, KernelFamily::Index, format!("eyelike_{w}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    fn one_hot(&mut self, id: NodeId, axis: i64) -> Result<()> {
        let idx = self.required(id, 0)?;
        let values = self.required(id, 2)?;
        let depth = match self.const_input(id, 1)?.map(|t| t.to_f64_vec()) {
            Some(v) if v.len() == 1 && v[0] >= 1.0 => v[0] as usize,
            Some(v) => return Err(CudaError::Invalid(format!("depth must be one positive value, found {v:?}"))),
            None => return Err(CudaError::Invalid("OneHot without a depth".into())),
        };
        if self.plan.buffers[values].shape.iter().product::<usize>() != 2 {
            return Err(CudaError::Invalid("values must hold 2 elements (off, on)".into()));
        }
        let idx = self.as_i64(id, idx, "indices")?;
        let is = self.plan.buffers[idx].shape.clone();
        let ax = Self::axis(axis, is.len() + 1)?;
        let (outer, inner) = (is[..ax].iter().product::<usize>(), is[ax..].iter().product::<usize>());
        let y = self.out(id, 0)?;
        if self.plan.buffers[y].shape.get(ax) != Some(&depth)
            || self.plan.buffers[y].dtype != self.plan.buffers[values].dtype
        {
            return Err(CudaError::Invalid(format!(
                "the output {}{:?} does not hold depth {depth} along axis {ax} in the values' type",
                self.plan.buffers[y].dtype, self.plan.buffers[y].shape
            )));
        }
        let w = self.width(y)?;
        let n = outer * depth * inner;
        if n == 0 {
            return Ok(());
        }
        let args = vec![
            Arg::Buffer(idx),
            Arg::Buffer(values),
            Arg::Buffer(y),
            Arg::I64(outer as i64),
            Arg::I64(depth as i64),
            Arg::I64(inner as i64),
        ];
        self.kernel(id, KernelFamily::Index, format!("onehot_{w}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    fn cum_sum(&mut self, id: NodeId, exclusive: bool, reverse: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        let axis =
            self.const_scalar(id, 1, "axis")?.ok_or_else(|| CudaError::Invalid("CumSum without an axis".into()))?;
        let xs = self.plan.buffers[x].shape.clone();
        let ax = Self::axis(axis, xs.len())?;
        let sfx = Self::value_suffix(self.plan.buffers[x].dtype, "cumsum")?;
        let (outer, n, inner) = Self::rows(&xs, &[ax])?;
        let y = self.out(id, 0)?;
        if outer * n * inner == 0 {
            return Ok(());
        }
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(y),
            Arg::I64(outer as i64),
            Arg::I64(n as i64),
            Arg::I64(inner as i64),
            Arg::I32(exclusive as i32),
            Arg::I32(reverse as i32),
        ];
        let config = launch::grid_stride((outer * inner) as u64);
        self.kernel(id, KernelFamily::Index, format!("cumsum_{sfx}"), config, args);
        Ok(())
    }

    /// Output `slot` of the node, or a scratch buffer of `dtype` and `shape` where the graph
    /// leaves it unnamed.
    fn out_or_temp(&mut self, id: NodeId, slot: usize, dtype: DType, shape: Vec<usize>) -> Result<BufferId> {
        if self.g.node(id).outputs.get(slot).is_some_and(|o| !o.name.is_empty()) {
            self.out(id, slot)
        } else {
            let name = format!("{}.out{slot}", self.g.node(id).name);
            Ok(self.temp(name, dtype, shape))
        }
    }

    fn top_k(&mut self, id: NodeId, axis: i64, largest: bool, k: Option<usize>) -> Result<()> {
        let x = self.required(id, 0)?;
        let k = match k {
            Some(k) => k,
            None => match self.const_scalar(id, 1, "k")? {
                Some(k) if k >= 0 => k as usize,
                Some(k) => return Err(CudaError::Invalid(format!("k = {k} is negative"))),
                None => return Err(CudaError::Invalid("TopK without k".into())),
            },
        };
        let (xs, dt) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let ax = Self::axis(axis, xs.len())?;
        if k > xs[ax] {
            return Err(CudaError::Invalid(format!("k = {k} is larger than axis {ax} of size {}", xs[ax])));
        }
        let sfx = Self::value_suffix(dt, "topk")?;
        let (outer, n, inner) = Self::rows(&xs, &[ax])?;
        let mut ys = xs.clone();
        ys[ax] = k;
        let values = self.out_or_temp(id, 0, dt, ys.clone())?;
        let indices = self.out_or_temp(id, 1, DType::I64, ys)?;
        if outer * k * inner == 0 {
            return Ok(());
        }
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(values),
            Arg::Buffer(indices),
            Arg::I64(outer as i64),
            Arg::I64(n as i64),
            Arg::I64(inner as i64),
            Arg::I64(k as i64),
            Arg::I32(largest as i32),
        ];
        let config = launch::grid_stride((outer * n * inner) as u64);
        self.kernel(id, KernelFamily::Index, format!("topk_{sfx}"), config, args);
        Ok(())
    }

    fn float_kernel_suffix(dt: DType, what: &str) -> Result<&'static str> {
        if matches!(dt, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            crate::codegen::dtype_suffix(dt)
        } else {
            Err(CudaError::Unsupported(format!("no {what} kernel for {dt}")))
        }
    }

    fn hardmax(&mut self, id: NodeId, axis: i64, coerce_2d: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        let (xs, dt) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let ax = Self::axis(axis, xs.len())?;
        let outer: usize = xs[..ax].iter().product();
        let (n, inner) =
            if coerce_2d { (xs[ax..].iter().product(), 1) } else { (xs[ax], xs[ax + 1..].iter().product()) };
        let sfx = Self::float_kernel_suffix(dt, "hardmax")?;
        let y = self.out(id, 0)?;
        if outer * n * inner == 0 {
            return Ok(());
        }
        let args =
            vec![Arg::Buffer(x), Arg::Buffer(y), Arg::I64(outer as i64), Arg::I64(n as i64), Arg::I64(inner as i64)];
        let config = launch::grid_stride((outer * inner) as u64);
        self.kernel(id, KernelFamily::Index, format!("hardmax_{sfx}"), config, args);
        Ok(())
    }

    /// NegativeLogLikelihoodLoss, and SoftmaxCrossEntropyLoss as the log-softmax over the
    /// classes (the reduce family's kernel) followed by the same loss.
    fn loss(&mut self, id: NodeId, op: &LossOp) -> Result<()> {
        let (reduction, ignore_index) = match op {
            LossOp::NegativeLogLikelihoodLoss { reduction, ignore_index }
            | LossOp::SoftmaxCrossEntropyLoss { reduction, ignore_index } => (*reduction, *ignore_index),
        };
        let x = self.required(id, 0)?;
        let target = self.required(id, 1)?;
        let weight = self.input(id, 2)?;
        let (xs, dt) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        if xs.len() < 2 {
            return Err(CudaError::Invalid(format!("input of shape {xs:?} (rank 2 or more expected)")));
        }
        let (n, c) = (xs[0], xs[1]);
        let d: usize = xs[2..].iter().product();
        let want: Vec<usize> = [n].into_iter().chain(xs[2..].iter().copied()).collect();
        if self.plan.buffers[target].shape != want {
            return Err(CudaError::Invalid(format!(
                "target of shape {:?} for input of shape {xs:?}",
                self.plan.buffers[target].shape
            )));
        }
        if let Some(w) = weight {
            let wb = &self.plan.buffers[w];
            if wb.shape != [c] || wb.dtype != dt {
                return Err(CudaError::Invalid(format!("weight of {}{:?}, expected {dt}[{c}]", wb.dtype, wb.shape)));
            }
        }
        if !self.plan.buffers[target].dtype.is_int() {
            return Err(CudaError::Invalid(format!("target of {}", self.plan.buffers[target].dtype)));
        }
        let sfx = Self::float_kernel_suffix(dt, op.name())?;
        let target = self.as_i64(id, target, "target")?;
        let probs = match op {
            LossOp::NegativeLogLikelihoodLoss { .. } => x,
            LossOp::SoftmaxCrossEntropyLoss { .. } => {
                if dt == DType::F64 {
                    return Err(CudaError::Unsupported("no logsoftmax kernel for f64".into()));
                }
                let lp = self.out_or_temp(id, 1, dt, xs.clone())?;
                if n * c * d > 0 {
                    let args = vec![
                        Arg::Buffer(x),
                        Arg::Buffer(lp),
                        Arg::I64(n as i64),
                        Arg::I64(c as i64),
                        Arg::I64(d as i64),
                    ];
                    let config = launch::per_row((n * d) as u64, c as u64);
                    self.kernel(id, KernelFamily::Reduce, format!("logsoftmax_{sfx}"), config, args);
                }
                lp
            }
        };
        let y = self.out(id, 0)?;
        let total = n * d;
        let code = match reduction {
            LossReduction::None => 0,
            LossReduction::Sum => 1,
            LossReduction::Mean => 2,
        };
        if total == 0 && reduction == LossReduction::None {
            return Ok(());
        }
        let message =
            format!("{} {}: a target is outside [0, {c}) and is not the ignore_index", op.name(), self.g.node(id).name);
        let err = self.error_flag(id, message);
        let args = vec![
            Arg::Buffer(probs),
            Arg::Buffer(target),
            weight.map_or(Arg::Null, Arg::Buffer),
            Arg::Buffer(y),
            Arg::I64(total as i64),
            Arg::I64(c as i64),
            Arg::I64(d as i64),
            Arg::I64(ignore_index.unwrap_or(0)),
            Arg::I32(ignore_index.is_some() as i32),
            Arg::I32(code),
            Arg::Buffer(err),
        ];
        // A reduced loss sums in one block, so the result does not depend on scheduling.
        let config = match reduction {
            LossReduction::None => launch::grid_stride(total as u64),
            _ => LaunchConfig::linear(1, launch::ROW_THREADS as u32),
        };
        self.kernel(id, KernelFamily::Index, format!("nll_loss_{sfx}"), config, args);
        Ok(())
    }
}
