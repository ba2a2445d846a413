//! The normalizations beyond LayerNorm and RMSNorm, through `kernels/norm.cu`: GroupNorm and
//! InstanceNorm, MeanVarianceNormalization, LpNormalization, BatchNormalization in inference
//! form and LRN; and the copy that brings the axes of a reduction together when they are not
//! neighbours.

use super::data::row_major;
use super::*;

impl Planner<'_> {
    /// Lowers the normalizations `plan.rs` does not handle itself.
    pub(super) fn norm_family(&mut self, id: NodeId, op: &NormOp) -> Result<()> {
        match op {
            NormOp::InstanceNormalization { epsilon } => self.group_norm(id, None, *epsilon),
            NormOp::GroupNormalization { num_groups, epsilon, .. } => self.group_norm(id, Some(*num_groups), *epsilon),
            NormOp::MeanVarianceNormalization { axes } => self.mvn(id, axes),
            NormOp::LpNormalization { axis, p } => self.lp_norm(id, *axis, *p),
            NormOp::BatchNormalization { epsilon, momentum, training_mode } => {
                self.batch_norm(id, *epsilon, training_mode.then_some(*momentum))
            }
            NormOp::LRN { alpha, beta, bias, size } => self.lrn(id, *alpha, *beta, *bias, *size),
            other => Err(CudaError::Unsupported(format!("the launch planner does not lower {} yet", other.name()))),
        }
    }

    /// The input's buffer, shape and kernel suffix, for the float kernels of `norm.cu`.
    fn norm_input(&self, id: NodeId, what: &str) -> Result<(BufferId, Vec<usize>, DType, &'static str)> {
        let x = self.required(id, 0)?;
        let (shape, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let sfx = self.float_suffix(x, what)?;
        Ok((x, shape, dtype, sfx))
    }

    /// Input `slot`, which must hold `len` elements of `dtype`.
    fn norm_param(&self, id: NodeId, slot: usize, what: &str, len: usize, dtype: DType) -> Result<BufferId> {
        let b = self.required(id, slot)?;
        let buf = &self.plan.buffers[b];
        if buf.shape.iter().product::<usize>() != len || buf.dtype != dtype {
            return Err(CudaError::Unsupported(format!(
                "{what} must hold {len} values of {dtype}, found {} {:?}",
                buf.dtype, buf.shape
            )));
        }
        Ok(b)
    }

    /// GroupNorm with `groups`, or InstanceNorm (`None`: one group per channel).
    fn group_norm(&mut self, id: NodeId, groups: Option<usize>, epsilon: f32) -> Result<()> {
        let (x, shape, dtype, sfx) = self.norm_input(id, "groupnorm")?;
        if shape.len() < 2 {
            return Err(CudaError::Invalid(format!("X must have rank 2 or more, found {shape:?}")));
        }
        let c = shape[1];
        let g = groups.unwrap_or(c);
        if g == 0 || c % g != 0 {
            return Err(CudaError::Invalid(format!("the {c} channels do not split into {g} groups")));
        }
        // Opset 18 has one scale and bias per group, opset 21 (and InstanceNorm) one per channel.
        let scale_len = self.plan.buffers[self.required(id, 1)?].shape.iter().product::<usize>();
        let per_group = groups.is_some() && scale_len == g && g != c;
        let len = if per_group { g } else { c };
        let scale = self.norm_param(id, 1, "scale", len, dtype)?;
        let bias = self.norm_param(id, 2, "bias", len, dtype)?;
        let plane: usize = shape[2..].iter().product();
        let rows = shape[0] * g;
        let per = c / g;
        let y = self.out(id, 0)?;
        if rows * per * plane == 0 {
            return Ok(());
        }
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(scale),
            Arg::Buffer(bias),
            Arg::Buffer(y),
            Arg::I64(rows as i64),
            Arg::I64(g as i64),
            Arg::I64(per as i64),
            Arg::I64(plane as i64),
            Arg::F32(epsilon),
            Arg::I32(per_group as i32),
        ];
        let config = launch::per_row(rows as u64, (per * plane) as u64);
        self.kernel(id, KernelFamily::Norm, format!("groupnorm_{sfx}"), config, args);
        Ok(())
    }

    fn mvn(&mut self, id: NodeId, axes: &[i64]) -> Result<()> {
        let (x, shape, dtype, sfx) = self.norm_input(id, "mvn")?;
        let mut axes: Vec<usize> = axes.iter().map(|&a| Self::axis(a, shape.len())).collect::<Result<_>>()?;
        axes.sort_unstable();
        axes.dedup();
        let y = self.out(id, 0)?;
        let total: usize = shape.iter().product();
        if total == 0 {
            return Ok(());
        }
        let r = shape.len();
        let trailing = axes.is_empty() || (axes.len() == r - axes[0] && axes.windows(2).all(|w| w[1] == w[0] + 1));
        if trailing {
            let n: usize = axes.iter().map(|&a| shape[a]).product();
            let rows = total / n;
            let args = vec![Arg::Buffer(x), Arg::Buffer(y), Arg::I64(rows as i64), Arg::I64(n as i64)];
            self.kernel(id, KernelFamily::Norm, format!("mvn_{sfx}"), launch::per_row(rows as u64, n as u64), args);
            return Ok(());
        }
        // The kept dims, then the normalized ones; normalize the rows; copy back.
        let (t, (rows, n, _)) = self.reduced_last(id, x, &axes)?;
        let tshape = self.plan.buffers[t].shape.clone();
        let name = format!("{}.normalized", self.g.node(id).name);
        let u = self.temp(name, dtype, tshape.clone());
        let args = vec![Arg::Buffer(t), Arg::Buffer(u), Arg::I64(rows as i64), Arg::I64(n as i64)];
        self.kernel(id, KernelFamily::Norm, format!("mvn_{sfx}"), launch::per_row(rows as u64, n as u64), args);
        let order = reduced_last_order(r, &axes);
        let ust = row_major(&tshape);
        let mut back = vec![0i64; r];
        for (pos, &d) in order.iter().enumerate() {
            back[d] = ust[pos];
        }
        self.permute_launch(id, u, y, &shape, &back, 0)
    }

    fn lp_norm(&mut self, id: NodeId, axis: i64, p: i64) -> Result<()> {
        let (x, shape, _, sfx) = self.norm_input(id, "lpnorm")?;
        if p != 1 && p != 2 {
            return Err(CudaError::Unsupported(format!("LpNormalization with p = {p} (ONNX allows 1 and 2)")));
        }
        let ax = Self::axis(axis, shape.len())?;
        let (outer, n, inner) =
            (shape[..ax].iter().product::<usize>(), shape[ax], shape[ax + 1..].iter().product::<usize>());
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
            Arg::I32(p as i32),
        ];
        let config = launch::per_row((outer * inner) as u64, n as u64);
        self.kernel(id, KernelFamily::Norm, format!("lpnorm_{sfx}"), config, args);
        Ok(())
    }

    /// BatchNormalization with the given statistics, or in training mode (`momentum` given)
    /// with the batch's, whose running updates go to the optional outputs 1 and 2.
    fn batch_norm(&mut self, id: NodeId, epsilon: f32, momentum: Option<f32>) -> Result<()> {
        let (x, shape, dtype, sfx) = self.norm_input(id, "batchnorm")?;
        let used = |slot: usize| self.g.node(id).outputs.get(slot).is_some_and(|o| !o.name.is_empty());
        if momentum.is_none() && (1..5).any(used) {
            return Err(CudaError::Unsupported(
                "BatchNormalization's running statistics outputs (before opset 9) have no kernel yet".into(),
            ));
        }
        if momentum.is_some() && (3..5).any(used) {
            return Err(CudaError::Unsupported("BatchNormalization's saved mean and variance outputs".into()));
        }
        if shape.len() < 2 {
            return Err(CudaError::Invalid(format!("X must have rank 2 or more, found {shape:?}")));
        }
        let c = shape[1];
        let mut params: Vec<BufferId> = ["scale", "B", "input_mean", "input_var"]
            .iter()
            .enumerate()
            .map(|(i, what)| self.norm_param(id, i + 1, what, c, dtype))
            .collect::<Result<_>>()?;
        let y = self.out(id, 0)?;
        let n: usize = shape.iter().product();
        let plane: usize = shape[2..].iter().product();
        if let Some(momentum) = momentum {
            let run_mean = if used(1) { Some(self.out(id, 1)?) } else { None };
            let run_var = if used(2) { Some(self.out(id, 2)?) } else { None };
            let name = self.g.node(id).name.clone();
            let mean = self.temp(format!("{name}.batch_mean"), dtype, vec![c]);
            let var = self.temp(format!("{name}.batch_var"), dtype, vec![c]);
            if c > 0 {
                let buf = |b: Option<BufferId>| b.map_or(Arg::Null, Arg::Buffer);
                let args = vec![
                    Arg::Buffer(x),
                    Arg::Buffer(params[2]),
                    Arg::Buffer(params[3]),
                    Arg::Buffer(mean),
                    Arg::Buffer(var),
                    buf(run_mean),
                    buf(run_var),
                    Arg::I64(shape[0] as i64),
                    Arg::I64(c as i64),
                    Arg::I64(plane as i64),
                    Arg::F32(momentum),
                ];
                let config = launch::per_row(c as u64, (shape[0] * plane) as u64);
                self.kernel(id, KernelFamily::Norm, format!("batchnorm_stats_{sfx}"), config, args);
            }
            params[2] = mean;
            params[3] = var;
        }
        if n == 0 {
            return Ok(());
        }
        let mut args = vec![Arg::Buffer(x)];
        args.extend(params.iter().map(|&b| Arg::Buffer(b)));
        args.extend([
            Arg::Buffer(y),
            Arg::I64(n as i64),
            Arg::I64(c as i64),
            Arg::I64(plane as i64),
            Arg::F32(epsilon),
        ]);
        self.kernel(id, KernelFamily::Norm, format!("batchnorm_{sfx}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    fn lrn(&mut self, id: NodeId, alpha: f32, beta: f32, bias: f32, size: usize) -> Result<()> {
        let (x, shape, _, sfx) = self.norm_input(id, "lrn")?;
        if shape.len() < 2 {
            return Err(CudaError::Invalid(format!("X must have rank 2 or more, found {shape:?}")));
        }
        if size == 0 {
            return Err(CudaError::Invalid("LRN with size 0".into()));
        }
        let y = self.out(id, 0)?;
        let n: usize = shape.iter().product();
        if n == 0 {
            return Ok(());
        }
        let plane: usize = shape[2..].iter().product();
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(y),
            Arg::I64(n as i64),
            Arg::I64(shape[1] as i64),
            Arg::I64(plane as i64),
            Arg::I64(size as i64),
            Arg::F32(alpha),
            Arg::F32(beta),
            Arg::F32(bias),
        ];
        self.kernel(id, KernelFamily::Norm, format!("lrn_{sfx}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    /// Copies `x` into a temp with its dims reordered to the kept ones, then `axes` (sorted, no
    /// repeats), both in their order: the reduction then runs over rows. Returns the temp and
    /// `(kept count, reduced count, 1)` as `[outer, n, inner]`.
    pub(super) fn reduced_last(
        &mut self,
        id: NodeId,
        x: BufferId,
        axes: &[usize],
    ) -> Result<(BufferId, (usize, usize, usize))> {
        let (shape, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        axes.dedup();
        if axes.iter().any(|&a| a >= shape.len()) {
            return Err(CudaError::Invalid(format!("axes {axes:?} are out of range for {shape:?}")));
        }
        let order = reduced_last_order(shape.len(), &axes);
        let st = row_major(&shape);
        let tshape: Vec<usize> = order.iter().map(|&d| shape[d]).collect();
        let tstrides: Vec<i64> = order.iter().map(|&d| st[d]).collect();
        let name = format!("{}.reduced_last", self.g.node(id).name);
        let t = self.temp(name, dtype, tshape.clone());
        self.permute_launch(id, x, t, &tshape, &tstrides, 0)?;
        let kept = shape.len() - axes.len();
        Ok((t, (tshape[..kept].iter().product(), tshape[kept..].iter().product(), 1)))
    }
}

/// The dims of a rank-`rank` tensor with `axes` (sorted) moved to the end, the others first.
fn reduced_last_order(rank: usize, axes: &[usize]) -> Vec<usize> {
    (0..rank).filter(|d| !axes.contains(d)).chain(axes.iter().copied()).collect()
}
