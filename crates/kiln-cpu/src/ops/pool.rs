//! CPU kernels for the pool family.
//!
//! The windowed pools first list, once per call, the input cells of every output position of
//! one `[n, c]` plane (a [`Windows`] table); every plane then reuses the table.

use super::common::{expect_float, from_f32, input, opt_input, strides, to_f32};
use super::reduce::{max_f32, sum_f32, PAR_MIN};
use crate::{bail, OpError, OpResult};
use kiln_ir::ops::pool::{unpool_size, PoolWindow, WindowDim};
use kiln_ir::ops::PoolOp;
use kiln_ir::{Elem, Tensor, TensorData};
use rayon::prelude::*;

pub(super) fn eval(op: &PoolOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let x = input(inputs, 0)?;
    if x.rank() < 2 {
        bail!("X must have rank 2 or more, found shape {:?}", x.shape());
    }
    match op {
        PoolOp::MaxPool { window, column_major } => max_pool(x, window, *column_major, num_outputs > 1),
        PoolOp::AveragePool { window, count_include_pad } => {
            let w = Windows::new(x.shape(), window)?;
            let v = to_f32(x);
            let out = w.map_f32(&v, |cells, padded| {
                let sum: f32 = cells.iter().sum();
                sum / if *count_include_pad { padded } else { cells.len() } as f32
            });
            Ok(vec![from_f32(w.out_shape, out, expect_float(x, "X")?)?])
        }
        PoolOp::LpPool { window, p } => {
            let w = Windows::new(x.shape(), window)?;
            let v = to_f32(x);
            let out = w.map_f32(&v, |cells, _| lp_norm(cells, *p));
            Ok(vec![from_f32(w.out_shape, out, expect_float(x, "X")?)?])
        }
        PoolOp::GlobalAveragePool => global(x, |s| sum_f32(s) / s.len() as f32),
        PoolOp::GlobalMaxPool => global(x, max_f32),
        PoolOp::GlobalLpPool { p } => global(x, |s| lp_norm(s, *p)),
        PoolOp::MaxUnpool { kernel_shape, strides, pads } => {
            max_unpool(x, input(inputs, 1)?, opt_input(inputs, 2), kernel_shape, strides, pads)
        }
        PoolOp::MaxRoiPool { pooled_shape, spatial_scale } => {
            max_roi_pool(x, input(inputs, 1)?, *pooled_shape, *spatial_scale)
        }
    }
}

fn lp_norm(s: &[f32], p: f32) -> f32 {
    if p == 2.0 {
        s.iter().map(|x| x * x).sum::<f32>().sqrt()
    } else if p == 1.0 {
        s.iter().map(|x| x.abs()).sum()
    } else {
        s.iter().map(|x| x.abs().powf(p)).sum::<f32>().powf(1.0 / p)
    }
}

/// The input cells of every output position of one plane.
struct Windows {
    /// The output shape `[N, C, out...]`.
    out_shape: Vec<usize>,
    /// Number of `[n, c]` planes.
    planes: usize,
    /// Input cells per plane.
    in_plane: usize,
    /// Output cells per plane.
    out_plane: usize,
    /// Row-major offsets of the in-bounds window cells of output position `o`:
    /// `cells[starts[o]..starts[o + 1]]`.
    cells: Vec<usize>,
    /// The same cells as column-major offsets (for MaxPool's `storage_order` = 1).
    cells_col: Vec<usize>,
    starts: Vec<usize>,
    /// Number of window cells within the padded input, per output position.
    padded: Vec<usize>,
}

impl Windows {
    fn new(shape: &[usize], window: &PoolWindow) -> Result<Windows, OpError> {
        let spatial = &shape[2..];
        let dims = window.dims(spatial).map_err(OpError)?;
        // Valid input coords and padded cell counts of every output index, per dim.
        let taps: Vec<Vec<Vec<usize>>> = dims.iter().map(dim_taps).collect();
        let pad_counts: Vec<Vec<usize>> = dims.iter().map(dim_padded_counts).collect();
        if spatial.contains(&0) {
            return Err(OpError::new(format!("cannot pool empty spatial dims of shape {shape:?}")));
        }
        let row = strides(spatial);
        let mut col = vec![1; spatial.len()];
        for d in 1..spatial.len() {
            col[d] = col[d - 1] * spatial[d - 1];
        }
        let out_sp: Vec<usize> = dims.iter().map(|d| d.output).collect();
        let out_plane: usize = out_sp.iter().product();
        let mut w = Windows {
            out_shape: [&shape[..2], &out_sp[..]].concat(),
            planes: shape[0] * shape[1],
            in_plane: spatial.iter().product(),
            out_plane,
            cells: vec![],
            cells_col: vec![],
            starts: Vec::with_capacity(out_plane + 1),
            padded: Vec::with_capacity(out_plane),
        };
        w.starts.push(0);
        let k = dims.len();
        let mut o = vec![0usize; k];
        for _ in 0..out_plane {
            w.padded.push((0..k).map(|d| pad_counts[d][o[d]]).product());
            let lists: Vec<&[usize]> = (0..k).map(|d| &taps[d][o[d]][..]).collect();
            if lists.iter().all(|l| !l.is_empty()) {
                let mut j = vec![0usize; k];
                loop {
                    let (mut r, mut c) = (0, 0);
                    for d in 0..k {
                        r += lists[d][j[d]] * row[d];
                        c += lists[d][j[d]] * col[d];
                    }
                    w.cells.push(r);
                    w.cells_col.push(c);
                    if !odometer(&mut j, |d| lists[d].len()) {
                        break;
                    }
                }
            }
            w.starts.push(w.cells.len());
            odometer(&mut o, |d| out_sp[d]);
        }
        Ok(w)
    }

    /// Applies `f(window values, padded count)` to every window of every plane.
    fn map_f32(&self, v: &[f32], f: impl Fn(&[f32], usize) -> f32 + Sync) -> Vec<f32> {
        let mut out = vec![0f32; self.planes * self.out_plane];
        let run = |(dst, plane): (&mut [f32], &[f32])| {
            let mut buf = Vec::new();
            for (o, d) in dst.iter_mut().enumerate() {
                buf.clear();
                buf.extend(self.cells[self.starts[o]..self.starts[o + 1]].iter().map(|&c| plane[c]));
                *d = f(&buf, self.padded[o]);
            }
        };
        if out.len() >= PAR_MIN / 8 {
            out.par_chunks_mut(self.out_plane).zip(v.par_chunks(self.in_plane)).for_each(run);
        } else {
            out.chunks_mut(self.out_plane).zip(v.chunks(self.in_plane)).for_each(run);
        }
        out
    }
}

/// Steps a row-major multi-index; false once it wraps around to all zeros.
fn odometer(idx: &mut [usize], size: impl Fn(usize) -> usize) -> bool {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < size(d) {
            return true;
        }
        idx[d] = 0;
    }
    false
}

/// The window start of output index `o`, in input coords (negative inside the begin padding).
fn window_start(d: &WindowDim, o: usize) -> i64 {
    (o * d.stride) as i64 - d.pad_begin as i64
}

fn dim_taps(d: &WindowDim) -> Vec<Vec<usize>> {
    (0..d.output)
        .map(|o| {
            let s = window_start(d, o);
            (0..d.kernel)
                .map(|j| s + (j * d.dilation) as i64)
                .filter(|&i| i >= 0 && i < d.input as i64)
                .map(|i| i as usize)
                .collect()
        })
        .collect()
}

fn dim_padded_counts(d: &WindowDim) -> Vec<usize> {
    let hi = (d.input + d.pad_end) as i64;
    (0..d.output)
        .map(|o| {
            let s = window_start(d, o);
            (0..d.kernel).filter(|&j| s + ((j * d.dilation) as i64) < hi).count()
        })
        .collect()
}

fn max_pool(x: &Tensor, window: &PoolWindow, column_major: bool, with_indices: bool) -> OpResult {
    if !with_indices && x.rank() == 4 {
        if let Ok(v) = x.as_slice::<f32>() {
            return max_pool_2d_f32(v, x.shape(), window);
        }
    }
    let w = Windows::new(x.shape(), window)?;
    let cells_for_index = if column_major { &w.cells_col } else { &w.cells };
    let mut indices = vec![0i64; w.planes * w.out_plane];
    let data = kiln_ir::dispatch!(x.data(), v => {
        let mut out = vec![Default::default(); w.planes * w.out_plane];
        let run = |(p, ((dst, idx), plane))| max_pool_plane(&w, cells_for_index, p, plane, dst, idx);
        if out.len() >= PAR_MIN / 8 {
            out.par_chunks_mut(w.out_plane)
                .zip(indices.par_chunks_mut(w.out_plane))
                .zip(v.par_chunks(w.in_plane))
                .enumerate()
                .for_each(run);
        } else {
            out.chunks_mut(w.out_plane)
                .zip(indices.chunks_mut(w.out_plane))
                .zip(v.chunks(w.in_plane))
                .enumerate()
                .for_each(run);
        }
        wrap(out)
    });
    let mut res = vec![Tensor::new(w.out_shape.clone(), data)?];
    if with_indices {
        res.push(Tensor::from_vec(w.out_shape, indices)?);
    }
    Ok(res)
}

/// The common case (2-D, f32, no Indices output) without per-window cell tables: each plane
/// walks its output rows with the valid input rows and columns of every window precomputed.
/// Same semantics as [`max_pool_plane`]: the first maximum wins, an all-padding window gives 0.
fn max_pool_2d_f32(v: &[f32], shape: &[usize], window: &PoolWindow) -> OpResult {
    let dims = window.dims(&shape[2..]).map_err(OpError)?;
    if shape[2..].contains(&0) {
        return Err(OpError::new(format!("cannot pool empty spatial dims of shape {shape:?}")));
    }
    let (rows, cols) = (dim_taps(&dims[0]), dim_taps(&dims[1]));
    let (ih, iw) = (shape[2], shape[3]);
    let (oh, ow) = (dims[0].output, dims[1].output);
    let planes = shape[0] * shape[1];
    let mut out = vec![0f32; planes * oh * ow];
    let run = |(dst, plane): (&mut [f32], &[f32])| {
        for (r, taps_r) in rows.iter().enumerate() {
            for (c, taps_c) in cols.iter().enumerate() {
                let mut best: Option<f32> = None;
                for &i in taps_r {
                    let line = &plane[i * iw..(i + 1) * iw];
                    for &j in taps_c {
                        let x = line[j];
                        if best.is_none_or(|b| x > b) {
                            best = Some(x);
                        }
                    }
                }
                dst[r * ow + c] = best.unwrap_or(0.0);
            }
        }
    };
    if out.len() >= PAR_MIN / 8 {
        out.par_chunks_mut(oh * ow).zip(v.par_chunks(ih * iw)).for_each(run);
    } else {
        out.chunks_mut(oh * ow).zip(v.chunks(ih * iw)).for_each(run);
    }
    let mut out_shape = shape[..2].to_vec();
    out_shape.extend([oh, ow]);
    Ok(vec![Tensor::from_vec(out_shape, out)?])
}

/// Max-pools plane `p` into `dst`, with the flat input index of each maximum in `idx`.
fn max_pool_plane<T: Elem>(w: &Windows, index_cells: &[usize], p: usize, plane: &[T], dst: &mut [T], idx: &mut [i64]) {
    for o in 0..w.out_plane {
        let range = w.starts[o]..w.starts[o + 1];
        // The first maximum wins; an all-padding window gives the zero of the type.
        let mut best = T::default();
        let mut at = None;
        for (j, &c) in w.cells[range.clone()].iter().enumerate() {
            if at.is_none() || plane[c] > best {
                best = plane[c];
                at = Some(j);
            }
        }
        dst[o] = best;
        idx[o] = at.map_or(-1, |j| (p * w.in_plane + index_cells[range.start + j]) as i64);
    }
}

/// Wraps a typed vector, for code inside `dispatch!` where the element type has no name.
fn wrap<T: Elem>(v: Vec<T>) -> TensorData {
    T::wrap(v)
}

/// Pools each `[n, c]` plane to one value.
fn global(x: &Tensor, f: impl Fn(&[f32]) -> f32 + Sync) -> OpResult {
    let dtype = expect_float(x, "X")?;
    let planes = x.shape()[0] * x.shape()[1];
    let plane: usize = x.shape()[2..].iter().product();
    if plane == 0 {
        bail!("cannot pool empty spatial dims of shape {:?}", x.shape());
    }
    let run = |v: &[f32]| -> Vec<f32> {
        if v.len() >= PAR_MIN {
            v.par_chunks_exact(plane).take(planes).map(&f).collect()
        } else {
            v.chunks_exact(plane).take(planes).map(&f).collect()
        }
    };
    let out = match x.as_slice::<f32>() {
        Ok(v) => run(v),
        Err(_) => run(&to_f32(x)),
    };
    let mut shape = x.shape().to_vec();
    shape[2..].iter_mut().for_each(|d| *d = 1);
    Ok(vec![from_f32(shape, out, dtype)?])
}

fn max_unpool(
    x: &Tensor,
    indices: &Tensor,
    output_shape: Option<&Tensor>,
    kernel_shape: &[usize],
    strides: &[usize],
    pads: &[usize],
) -> OpResult {
    let k = kernel_shape.len();
    if x.rank() != k + 2 {
        bail!("X has {} spatial dims but kernel_shape has {k}", x.rank() - 2);
    }
    if indices.shape() != x.shape() {
        bail!("I must have the shape of X {:?}, found {:?}", x.shape(), indices.shape());
    }
    if !indices.dtype().is_int() {
        bail!("I must be an integer tensor, found {}", indices.dtype());
    }
    let mut inferred = x.shape()[..2].to_vec();
    for d in 0..k {
        inferred
            .push(unpool_size(x.shape()[d + 2], kernel_shape[d], strides[d], pads[d], pads[d + k]).map_err(OpError)?);
    }
    let shape = match output_shape {
        None => inferred.clone(),
        Some(t) => {
            let s = t.to_i64_vec();
            if s.len() != x.rank() || s.iter().any(|&d| d < 0) {
                bail!("output_shape must hold {} sizes, found {s:?}", x.rank());
            }
            s.into_iter().map(|d| d as usize).collect()
        }
    };
    let idx = indices.to_i64_vec();
    let n_inferred: usize = inferred.iter().product();
    let n_out: usize = shape.iter().product();
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= n_inferred) {
        bail!("index {bad} in I is out of range for an output of {n_inferred} cells");
    }
    // Scatter into the inferred shape, then place that in the top-left corner of the output.
    let in_st = strides_of(&inferred);
    let out_st = strides_of(&shape);
    let data = kiln_ir::dispatch!(x.data(), v => {
        let mut out = vec![Default::default(); n_out];
        'cells: for (&val, &i) in v.iter().zip(&idx) {
            let mut rest = i as usize;
            let mut o = 0;
            for d in 0..inferred.len() {
                let c = rest / in_st[d];
                rest %= in_st[d];
                if c >= shape[d] {
                    continue 'cells;
                }
                o += c * out_st[d];
            }
            out[o] = val;
        }
        wrap(out)
    });
    Ok(vec![Tensor::new(shape, data)?])
}

fn strides_of(shape: &[usize]) -> Vec<usize> {
    strides(shape).into_iter().map(|s| s.max(1)).collect()
}

fn max_roi_pool(x: &Tensor, rois: &Tensor, pooled: [usize; 2], spatial_scale: f32) -> OpResult {
    let dtype = expect_float(x, "X")?;
    if x.rank() != 4 {
        bail!("X must be 4-D, found shape {:?}", x.shape());
    }
    if rois.rank() != 2 || rois.shape()[1] != 5 {
        bail!("rois must have shape [num_rois, 5], found {:?}", rois.shape());
    }
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let [ph, pw] = pooled;
    let v = to_f32(x);
    let r = to_f32(rois);
    let mut out = Vec::with_capacity(rois.shape()[0] * c * ph * pw);
    for roi in r.chunks_exact(5) {
        let b = roi[0] as i64;
        if b < 0 || b as usize >= n {
            bail!("RoI batch index {b} is out of range for a batch of {n}");
        }
        let scaled = |i: usize| (roi[i] * spatial_scale).round() as i64;
        let (x1, y1, x2, y2) = (scaled(1), scaled(2), scaled(3), scaled(4));
        let bin_h = (y2 - y1 + 1).max(1) as f32 / ph as f32;
        let bin_w = (x2 - x1 + 1).max(1) as f32 / pw as f32;
        let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
        for ch in 0..c {
            let plane = &v[(b as usize * c + ch) * h * w..][..h * w];
            for i in 0..ph {
                let hs = clip((i as f32 * bin_h).floor() as i64 + y1, h);
                let he = clip(((i + 1) as f32 * bin_h).ceil() as i64 + y1, h);
                for j in 0..pw {
                    let ws = clip((j as f32 * bin_w).floor() as i64 + x1, w);
                    let we = clip(((j + 1) as f32 * bin_w).ceil() as i64 + x1, w);
                    let mut m = if he <= hs || we <= ws { 0.0 } else { f32::NEG_INFINITY };
                    for yy in hs..he {
                        m = plane[yy * w + ws..yy * w + we].iter().fold(m, |a, &b| a.max(b));
                    }
                    out.push(m);
                }
            }
        }
    }
    Ok(vec![from_f32(vec![rois.shape()[0], c, ph, pw], out, dtype)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::ops::pool::AutoPad;

    fn t<T: Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Runs the kernel and compares every output: shape and type exactly, values within 1e-5.
    fn check(op: PoolOp, inputs: &[Tensor], expected: &[Tensor]) {
        let ins: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
        let out = eval(&op, &ins, expected.len()).unwrap();
        assert_eq!(out.len(), expected.len());
        for (o, e) in out.iter().zip(expected) {
            assert_eq!((o.dtype(), o.shape()), (e.dtype(), e.shape()), "{o:?} vs {e:?}");
            for (a, b) in o.to_f64_vec().iter().zip(e.to_f64_vec()) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{o:?} vs {e:?}");
            }
        }
    }

    fn window(k: usize, s: usize, p: usize, ceil_mode: bool) -> PoolWindow {
        PoolWindow {
            kernel_shape: vec![k, k],
            strides: vec![s, s],
            pads: vec![p; 4],
            auto_pad: AutoPad::NotSet,
            dilations: vec![1, 1],
            ceil_mode,
        }
    }

    #[test]
    fn max_pool_indices_row_and_column_major() {
        let x = t(&[1, 1, 4, 4], (0..16).map(|i| i as f32).collect());
        let y = t(&[1, 1, 2, 2], vec![5f32, 7.0, 13.0, 15.0]);
        let op = |column_major| PoolOp::MaxPool { window: window(3, 2, 1, false), column_major };
        check(op(false), std::slice::from_ref(&x), &[y.clone(), t(&[1, 1, 2, 2], vec![5i64, 7, 13, 15])]);
        check(op(true), &[x], &[y, t(&[1, 1, 2, 2], vec![5i64, 13, 7, 15])]);
    }

    #[test]
    fn max_pool_on_integers_with_odd_sizes() {
        let x = t(&[1, 2, 3, 5], (0..30u32).map(|i| (i * 37 % 31) as u8).collect());
        let op = PoolOp::MaxPool { window: window(2, 2, 0, true), column_major: false };
        let ins = [Some(&x)];
        let out = eval(&op, &ins, 1).unwrap();
        // ceil_mode: 3 rows give 2 windows, 5 columns give 3; windows are clipped at the edge.
        assert_eq!(out[0].shape(), &[1, 2, 2, 3]);
        let v = x.as_slice::<u8>().unwrap();
        let at = |c: usize, h: usize, w: usize| v[(c * 3 + h) * 5 + w];
        // The last window of channel 1 holds only the corner cell.
        assert_eq!(out[0].as_slice::<u8>().unwrap()[11], at(1, 2, 4));
        assert_eq!(out[0].as_slice::<u8>().unwrap()[0], at(0, 0, 0).max(at(0, 0, 1)).max(at(0, 1, 0)).max(at(0, 1, 1)));
    }

    #[test]
    fn ceil_mode_drops_a_window_starting_in_the_padding() {
        let x = t(&[1, 1, 2, 2], vec![1f32, 2.0, 3.0, 4.0]);
        let op = PoolOp::MaxPool { window: window(1, 2, 0, true), column_major: false };
        check(op, &[x], &[t(&[1, 1, 1, 1], vec![1f32])]);
    }

    #[test]
    fn average_pool_counts_padding_only_when_asked() {
        let x = t(&[1, 1, 3, 3], vec![1f32; 9]);
        let op = |count_include_pad| PoolOp::AveragePool { window: window(2, 1, 1, false), count_include_pad };
        check(op(false), std::slice::from_ref(&x), &[t(&[1, 1, 4, 4], vec![1f32; 16])]);
        let mut want = vec![0.5f32; 16];
        for &i in &[0, 3, 12, 15] {
            want[i] = 0.25;
        }
        for &i in &[5, 6, 9, 10] {
            want[i] = 1.0;
        }
        check(op(true), &[x], &[t(&[1, 1, 4, 4], want)]);
    }

    #[test]
    fn same_lower_pads_at_the_beginning() {
        let x = t(&[1, 1, 1, 4], vec![1f32, 2.0, 3.0, 4.0]);
        let mut w = window(1, 1, 0, false);
        w.kernel_shape = vec![1, 2];
        w.auto_pad = AutoPad::SameLower;
        let op = PoolOp::LpPool { window: w, p: 1.0 };
        check(op, &[x], &[t(&[1, 1, 1, 4], vec![1f32, 3.0, 5.0, 7.0])]);
    }

    #[test]
    fn global_pools_in_half_precision() {
        let x = t(&[1, 2, 3], [1f32, 2.0, 6.0, -1.0, -2.0, -3.0].map(kiln_ir::f16::from_f32).to_vec());
        let want = |v: [f32; 2]| t(&[1, 2, 1], v.map(kiln_ir::f16::from_f32).to_vec());
        check(PoolOp::GlobalAveragePool, std::slice::from_ref(&x), &[want([3.0, -2.0])]);
        check(PoolOp::GlobalMaxPool, &[x], &[want([6.0, -1.0])]);
    }

    #[test]
    fn max_unpool_scatters_and_pads_to_output_shape() {
        let x = t(&[1, 1, 1, 2], vec![5f32, 7.0]);
        let i = t(&[1, 1, 1, 2], vec![1i64, 2]);
        let op = PoolOp::MaxUnpool { kernel_shape: vec![2, 2], strides: vec![2, 2], pads: vec![0; 4] };
        check(op.clone(), &[x.clone(), i.clone()], &[t(&[1, 1, 2, 4], vec![0f32, 5.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0])]);
        let shape = t(&[4], vec![1i64, 1, 2, 5]);
        let want = vec![0f32, 5.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        check(op.clone(), &[x.clone(), i, shape], &[t(&[1, 1, 2, 5], want)]);
        let bad = t(&[1, 1, 1, 2], vec![1i64, 8]);
        let err = eval(&op, &[Some(&x), Some(&bad)], 1).unwrap_err();
        assert!(err.0.contains("out of range"), "{err}");
    }
}
