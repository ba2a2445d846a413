//! Copy kernels: every op whose output is a strided view of its input (transpose, slice,
//! split, tile, expand, depth/space moves) or an index map per axis (pad, crop).
//!
//! The strided copy merges contiguous dims first, so the inner loop is a `memcpy` of the
//! longest contiguous run wherever the view has one.

use super::{ints, opt_ints};
use crate::ops::common::{input, opt_input, strides};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::layout::{resolve_perm, slice_range, DepthToSpaceMode, PadMode, SliceAttrs};
use kiln_ir::{dispatch, Elem, Tensor};

/// Signed row-major strides.
fn istrides(shape: &[usize]) -> Vec<isize> {
    strides(shape).into_iter().map(|s| s as isize).collect()
}

/// Copies the view of `src` starting at `base` with the given shape and element strides
/// into a new row-major vector. The caller guarantees every addressed offset is in range.
pub(super) fn strided<T: Copy>(src: &[T], base: isize, shape: &[usize], strides: &[isize]) -> Vec<T> {
    let n: usize = shape.iter().product();
    if n == 0 {
        return Vec::new();
    }
    // Drop unit dims and merge dims that are contiguous with their inner neighbour.
    let mut dims: Vec<(usize, isize)> = Vec::with_capacity(shape.len());
    for (&d, &s) in shape.iter().zip(strides) {
        if d == 1 {
            continue;
        }
        match dims.last_mut() {
            Some(last) if last.1 == s * d as isize => {
                last.0 *= d;
                last.1 = s;
            }
            _ => dims.push((d, s)),
        }
    }
    // When the innermost output dim is strided in the source but another dim is contiguous
    // there (a transpose that moves the last axis), copy in cache-sized tiles instead.
    if let Some(j) = dims.iter().position(|&(_, s)| s == 1) {
        if dims.last().is_some_and(|&(d, s)| s != 1 && d > 1) && j + 1 < dims.len() {
            return tiled(src, base, &dims, j, n);
        }
    }
    let (len, step) = dims.pop().unwrap_or((1, 1));
    let mut out = Vec::with_capacity(n);
    let mut coord = vec![0usize; dims.len()];
    let mut off = base;
    loop {
        let o = off as usize;
        match step {
            1 => out.extend_from_slice(&src[o..o + len]),
            0 => out.extend(std::iter::repeat_n(src[o], len)),
            _ => out.extend((0..len).map(|i| src[(off + i as isize * step) as usize])),
        }
        // Advance the odometer over the outer dims.
        let mut d = dims.len();
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            coord[d] += 1;
            off += dims[d].1;
            if coord[d] < dims[d].0 {
                break;
            }
            off -= dims[d].1 * dims[d].0 as isize;
            coord[d] = 0;
        }
    }
}

/// [`strided`] for views whose innermost dim is strided while dim `j` is contiguous in the
/// source: 2D tiles of (dim `j`, last dim) are copied so both sides stay in cache.
fn tiled<T: Copy>(src: &[T], base: isize, dims: &[(usize, isize)], j: usize, n: usize) -> Vec<T> {
    const TILE: usize = 32;
    let r = dims.len();
    let mut ostr = vec![1usize; r];
    for d in (0..r - 1).rev() {
        ostr[d] = ostr[d + 1] * dims[d + 1].0;
    }
    let (nj, oj) = (dims[j].0, ostr[j]);
    let (nl, sl) = dims[r - 1];
    let mut out = vec![src[base as usize]; n];
    // The other dims, walked with an odometer.
    let outer: Vec<usize> = (0..r - 1).filter(|&d| d != j).collect();
    let mut coord = vec![0usize; outer.len()];
    let (mut soff, mut ooff) = (base, 0usize);
    loop {
        for a0 in (0..nj).step_by(TILE) {
            for b0 in (0..nl).step_by(TILE) {
                for a in a0..(a0 + TILE).min(nj) {
                    let o = ooff + a * oj;
                    let s = soff + a as isize;
                    for b in b0..(b0 + TILE).min(nl) {
                        out[o + b] = src[(s + b as isize * sl) as usize];
                    }
                }
            }
        }
        let mut k = outer.len();
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            let d = outer[k];
            coord[k] += 1;
            soff += dims[d].1;
            ooff += ostr[d];
            if coord[k] < dims[d].0 {
                break;
            }
            soff -= dims[d].1 * dims[d].0 as isize;
            ooff -= ostr[d] * dims[d].0;
            coord[k] = 0;
        }
    }
}

/// A strided view of a tensor, copied out.
pub(super) fn view(t: &Tensor, base: isize, shape: Vec<usize>, strides: &[isize]) -> Result<Tensor, OpError> {
    Ok(dispatch!(t.data(), v => Tensor::from_vec(shape.clone(), strided(v, base, &shape, strides))?))
}

/// Builds the output from a per-axis map: output index `o` along axis `d` reads input index
/// `maps[d][o]`, and any `None` gives `fill`.
fn axis_map<T: Elem>(src: &[T], in_shape: &[usize], maps: &[Vec<Option<usize>>], fill: &Tensor) -> Vec<T> {
    let fill = T::slice(fill.data()).and_then(|s| s.first().copied()).unwrap_or_default();
    let out_shape: Vec<usize> = maps.iter().map(Vec::len).collect();
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let st = strides(in_shape);
    let rank = maps.len();
    if rank == 0 {
        out.push(src[0]);
        return out;
    }
    let last = &maps[rank - 1];
    let mut coord = vec![0usize; rank - 1];
    loop {
        // Offset of the row, or None when an outer axis maps outside the input.
        let row: Option<usize> =
            coord.iter().enumerate().try_fold(0usize, |acc, (d, &c)| maps[d][c].map(|i| acc + i * st[d]));
        match row {
            None => out.extend(std::iter::repeat_n(fill, last.len())),
            Some(r) => out.extend(last.iter().map(|m| m.map_or(fill, |i| src[r + i]))),
        }
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            coord[d] += 1;
            if coord[d] < out_shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
}

/// Runs [`axis_map`] on a tensor; `fill` is converted to the tensor's type.
fn map_tensor(t: &Tensor, maps: &[Vec<Option<usize>>], fill: &Tensor) -> Result<Tensor, OpError> {
    let fill = fill.cast(t.dtype());
    let shape: Vec<usize> = maps.iter().map(Vec::len).collect();
    Ok(dispatch!(t.data(), v => Tensor::from_vec(shape, axis_map(v, t.shape(), maps, &fill))?))
}

pub(super) fn transpose(perm: Option<&[i64]>, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let p = resolve_perm(perm, x.rank()).map_err(OpError)?;
    let st = istrides(x.shape());
    let shape = p.iter().map(|&i| x.shape()[i]).collect();
    let pst: Vec<isize> = p.iter().map(|&i| st[i]).collect();
    Ok(vec![view(x, 0, shape, &pst)?])
}

pub(super) fn slice(attrs: Option<&SliceAttrs>, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let (starts, ends, axes, steps) = match attrs {
        Some(a) => (a.starts.clone(), a.ends.clone(), a.axes.clone(), None),
        None => (ints(input(inputs, 1)?), ints(input(inputs, 2)?), opt_ints(inputs, 3), opt_ints(inputs, 4)),
    };
    let k = starts.len();
    let axes = axes.unwrap_or_else(|| (0..k as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; k]);
    if ends.len() != k || axes.len() != k || steps.len() != k {
        bail!("starts, ends, axes and steps have lengths {k}, {}, {} and {}", ends.len(), axes.len(), steps.len());
    }
    let st = istrides(x.shape());
    let mut shape = x.shape().to_vec();
    let mut vst = st.clone();
    let mut base = 0isize;
    let mut seen = vec![false; x.rank()];
    for i in 0..k {
        let a = super::axis(axes[i], x.rank())?;
        if std::mem::replace(&mut seen[a], true) {
            bail!("axis {} is repeated in axes {axes:?}", axes[i]);
        }
        let (s, step, count) = slice_range(x.shape()[a], starts[i], ends[i], steps[i]).map_err(OpError)?;
        shape[a] = count;
        vst[a] = st[a] * step as isize;
        if count > 0 {
            base += s as isize * st[a];
        }
    }
    if shape.contains(&0) {
        base = 0;
    }
    Ok(vec![view(x, base, shape, &vst)?])
}

pub(super) fn concat(axis: i64, inputs: &[Option<&Tensor>]) -> OpResult {
    let parts: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
    let Some(first) = parts.first() else { bail!("no inputs") };
    let rank = first.rank();
    let a = super::axis(axis, rank)?;
    let mut total = 0;
    for p in &parts {
        if p.dtype() != first.dtype() {
            bail!("inputs have types {} and {}", first.dtype(), p.dtype());
        }
        let ok = p.rank() == rank && (0..rank).all(|d| d == a || p.shape()[d] == first.shape()[d]);
        if !ok {
            bail!("cannot concatenate shapes {:?} and {:?} along axis {a}", first.shape(), p.shape());
        }
        total += p.shape()[a];
    }
    let mut shape = first.shape().to_vec();
    shape[a] = total;
    let outer: usize = shape[..a].iter().product();
    let inner: usize = shape[a + 1..].iter().product();
    fn run<T: Elem>(_: &[T], parts: &[&Tensor], outer: usize, inner: usize, a: usize) -> Result<Vec<T>, OpError> {
        let slices: Vec<(&[T], usize)> =
            parts.iter().map(|p| Ok((p.as_slice::<T>()?, p.shape()[a] * inner))).collect::<Result<_, OpError>>()?;
        let mut out = Vec::with_capacity(outer * slices.iter().map(|s| s.1).sum::<usize>());
        for o in 0..outer {
            for (s, chunk) in &slices {
                out.extend_from_slice(&s[o * chunk..(o + 1) * chunk]);
            }
        }
        Ok(out)
    }
    let t = dispatch!(first.data(), v => Tensor::from_vec(shape, run(v, &parts, outer, inner, a)?)?);
    Ok(vec![t])
}

pub(super) fn split(axis: i64, split: Option<&[i64]>, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let x = input(inputs, 0)?;
    let a = super::axis(axis, x.rank())?;
    let n = x.shape().get(a).copied().unwrap_or(1);
    let sizes: Vec<usize> = match split.map(<[i64]>::to_vec).or_else(|| opt_ints(inputs, 1)) {
        Some(s) => {
            if s.iter().any(|&v| v < 0) || s.iter().sum::<i64>() != n as i64 {
                bail!("split sizes {s:?} do not add up to dim {n}");
            }
            if s.len() != num_outputs {
                bail!("{} split sizes for {num_outputs} outputs", s.len());
            }
            s.iter().map(|&v| v as usize).collect()
        }
        None => {
            if num_outputs == 0 {
                bail!("no outputs");
            }
            let c = n.div_ceil(num_outputs);
            (0..num_outputs).map(|i| c.min(n.saturating_sub(i * c))).collect()
        }
    };
    let st = istrides(x.shape());
    let mut start = 0;
    let mut outs = Vec::with_capacity(sizes.len());
    for s in sizes {
        let mut shape = x.shape().to_vec();
        shape[a] = s;
        let base = if s == 0 { 0 } else { start as isize * st[a] };
        outs.push(view(x, base, shape, &st)?);
        start += s;
    }
    Ok(outs)
}

pub(super) fn tile(inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let reps = ints(input(inputs, 1)?);
    if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
        bail!("repeats {reps:?} must be {} non-negative counts", x.rank());
    }
    // Tile is a broadcast of a [r0, d0, r1, d1, ...] view: the repeat dims have stride 0.
    let st = istrides(x.shape());
    let mut shape = Vec::with_capacity(2 * x.rank());
    let mut vst = Vec::with_capacity(2 * x.rank());
    for (d, (&r, &s)) in reps.iter().zip(&st).enumerate() {
        shape.extend([r as usize, x.shape()[d]]);
        vst.extend([0, s]);
    }
    let out: Vec<usize> = x.shape().iter().zip(&reps).map(|(&d, &r)| d * r as usize).collect();
    Ok(vec![view(x, 0, shape, &vst)?.reshape(out)?])
}

pub(super) fn expand(inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let target = ints(input(inputs, 1)?);
    if target.iter().any(|&d| d < 0) {
        bail!("shape {target:?} has a negative dim");
    }
    let target: Vec<usize> = target.iter().map(|&d| d as usize).collect();
    let Some(shape) = kiln_ir::ops::infer::broadcast_shapes(x.shape(), &target) else {
        bail!("cannot expand shape {:?} to {target:?}", x.shape())
    };
    let st = crate::ops::common::broadcast_strides(x.shape(), &shape);
    let st: Vec<isize> = st.into_iter().map(|s| s as isize).collect();
    Ok(vec![view(x, 0, shape, &st)?])
}

pub(super) fn depth_to_space(blocksize: usize, mode: DepthToSpaceMode, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let &[n, c, h, w] = x.shape() else { bail!("input must be 4D, found shape {:?}", x.shape()) };
    let b = blocksize;
    if c % (b * b) != 0 {
        bail!("channels {c} are not a multiple of blocksize² {}", b * b);
    }
    let c2 = c / (b * b);
    let (view_shape, perm) = match mode {
        DepthToSpaceMode::Dcr => ([n, b, b, c2, h, w], [0, 3, 4, 1, 5, 2]),
        DepthToSpaceMode::Crd => ([n, c2, b, b, h, w], [0, 1, 4, 2, 5, 3]),
    };
    let st = istrides(&view_shape);
    let shape = perm.iter().map(|&i| view_shape[i]).collect();
    let pst: Vec<isize> = perm.iter().map(|&i| st[i]).collect();
    Ok(vec![view(x, 0, shape, &pst)?.reshape(vec![n, c2, h * b, w * b])?])
}

pub(super) fn space_to_depth(blocksize: usize, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let &[n, c, h, w] = x.shape() else { bail!("input must be 4D, found shape {:?}", x.shape()) };
    let b = blocksize;
    if h % b != 0 || w % b != 0 {
        bail!("spatial dims {h}x{w} are not multiples of blocksize {b}");
    }
    let view_shape = [n, c, h / b, b, w / b, b];
    let perm = [0, 3, 5, 1, 2, 4];
    let st = istrides(&view_shape);
    let shape = perm.iter().map(|&i| view_shape[i]).collect();
    let pst: Vec<isize> = perm.iter().map(|&i| st[i]).collect();
    Ok(vec![view(x, 0, shape, &pst)?.reshape(vec![n, c * b * b, h / b, w / b])?])
}

/// The input index that output index `o` of a padded axis reads, by mode.
fn pad_index(mode: PadMode, o: usize, begin: i64, n: usize) -> Option<usize> {
    let i = o as i64 - begin;
    let n = n as i64;
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    if n == 0 {
        return None;
    }
    Some(match mode {
        PadMode::Constant => return None,
        PadMode::Edge => i.clamp(0, n - 1) as usize,
        PadMode::Wrap => i.rem_euclid(n) as usize,
        PadMode::Reflect => {
            if n == 1 {
                0
            } else {
                let p = 2 * (n - 1);
                let j = i.rem_euclid(p);
                (if j >= n { p - j } else { j }) as usize
            }
        }
    })
}

pub(super) fn pad(mode: PadMode, pads: Option<&[i64]>, value: f32, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let r = x.rank();
    let (pads, fill) = match pads {
        Some(p) => (p.to_vec(), Tensor::scalar(value)),
        None => {
            let fill = match opt_input(inputs, 2) {
                Some(t) if !t.is_empty() => t.clone(),
                _ => Tensor::scalar(0f32),
            };
            (ints(input(inputs, 1)?), fill)
        }
    };
    let axes: Vec<usize> = match opt_ints(inputs, 3) {
        Some(a) => a.iter().map(|&a| super::axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        bail!("pads {pads:?} must have 2 entries per padded axis ({})", axes.len());
    }
    let mut begin = vec![0i64; r];
    let mut end = vec![0i64; r];
    for (k, &a) in axes.iter().enumerate() {
        begin[a] = pads[k];
        end[a] = pads[k + axes.len()];
    }
    let mut maps = Vec::with_capacity(r);
    for d in 0..r {
        let n = x.shape()[d];
        let m = n as i64 + begin[d] + end[d];
        if m < 0 {
            bail!("pads {} and {} remove more than dim {d} of size {n}", begin[d], end[d]);
        }
        if n == 0 && m > 0 && mode != PadMode::Constant {
            bail!("cannot pad the empty dim {d} in {mode:?} mode");
        }
        maps.push((0..m as usize).map(|o| pad_index(mode, o, begin[d], n)).collect());
    }
    Ok(vec![map_tensor(x, &maps, &fill)?])
}

pub(super) fn center_crop_pad(axes: Option<&[i64]>, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let r = x.rank();
    let target = ints(input(inputs, 1)?);
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&a| super::axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    if target.len() != axes.len() {
        bail!("shape {target:?} has {} entries for {} axes", target.len(), axes.len());
    }
    let mut maps: Vec<Vec<Option<usize>>> = x.shape().iter().map(|&n| (0..n).map(Some).collect()).collect();
    for (&a, &t) in axes.iter().zip(&target) {
        if t < 0 {
            bail!("shape {target:?} has a negative dim");
        }
        let (n, t) = (x.shape()[a], t as usize);
        maps[a] = if t <= n {
            let s = (n - t) / 2;
            (0..t).map(|o| Some(o + s)).collect()
        } else {
            let s = (t - n) / 2;
            (0..t).map(|o| o.checked_sub(s).filter(|&i| i < n)).collect()
        };
    }
    Ok(vec![map_tensor(x, &maps, &Tensor::scalar(0f32))?])
}

pub(super) fn reverse_sequence(batch_axis: usize, time_axis: usize, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let lens = ints(input(inputs, 1)?);
    if x.rank() < 2 {
        bail!("input must have rank 2 or more, found shape {:?}", x.shape());
    }
    let (nb, nt) = (x.shape()[batch_axis], x.shape()[time_axis]);
    if lens.len() != nb {
        bail!("sequence_lens has {} entries for batch size {nb}", lens.len());
    }
    if let Some(l) = lens.iter().find(|&&l| l < 0 || l as usize > nt) {
        bail!("sequence length {l} is out of range 0..={nt}");
    }
    let inner: usize = x.shape()[2..].iter().product();
    let st = strides(x.shape());
    fn run<T: Copy>(v: &[T], lens: &[i64], nb: usize, nt: usize, inner: usize, sb: usize, stt: usize) -> Vec<T> {
        let mut out = v.to_vec();
        for (b, &l) in lens.iter().enumerate().take(nb) {
            for t in 0..(l as usize).min(nt) {
                let src = b * sb + (l as usize - 1 - t) * stt;
                let dst = b * sb + t * stt;
                out[dst..dst + inner].copy_from_slice(&v[src..src + inner]);
            }
        }
        out
    }
    let (sb, stt) = (st[batch_axis], st[time_axis]);
    let t = dispatch!(x.data(), v => Tensor::from_vec(x.shape().to_vec(), run(v, &lens, nb, nt, inner, sb, stt))?);
    Ok(vec![t])
}

pub(super) fn trilu(upper: bool, inputs: &[Option<&Tensor>]) -> OpResult {
    let x = input(inputs, 0)?;
    let k = match opt_input(inputs, 1) {
        Some(t) => *ints(t).first().unwrap_or(&0),
        None => 0,
    };
    if x.rank() < 2 {
        bail!("input must have rank 2 or more, found shape {:?}", x.shape());
    }
    let (rows, cols) = (x.shape()[x.rank() - 2], x.shape()[x.rank() - 1]);
    fn run<T: Elem>(v: &[T], rows: usize, cols: usize, k: i64, upper: bool) -> Vec<T> {
        let mut out = v.to_vec();
        if rows * cols == 0 {
            return out;
        }
        for m in out.chunks_mut(rows * cols) {
            for i in 0..rows {
                for j in 0..cols {
                    let d = j as i64 - i as i64;
                    if (upper && d < k) || (!upper && d > k) {
                        m[i * cols + j] = T::default();
                    }
                }
            }
        }
        out
    }
    let t = dispatch!(x.data(), v => Tensor::from_vec(x.shape().to_vec(), run(v, rows, cols, k, upper))?);
    Ok(vec![t])
}
