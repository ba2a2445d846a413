//! CPU kernels for the loss family: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.
//!
//! Both compute in f64 and cast the results back to the input's type. The input is viewed as
//! `[N, C, D]` with `D` the product of the trailing dims, and the target as `[N, D]`.

use super::common::{expect_float, input, opt_input};
use crate::{bail, OpResult};
use kiln_ir::ops::loss::LossReduction;
use kiln_ir::ops::LossOp;
use kiln_ir::Tensor;

pub(super) fn eval(op: &LossOp, inputs: &[Option<&Tensor>], num_outputs: usize) -> OpResult {
    let (reduction, ignore_index) = match op {
        LossOp::NegativeLogLikelihoodLoss { reduction, ignore_index }
        | LossOp::SoftmaxCrossEntropyLoss { reduction, ignore_index } => (*reduction, *ignore_index),
    };
    let x = input(inputs, 0)?;
    let dtype = expect_float(x, "input")?;
    let shape = x.shape();
    if shape.len() < 2 {
        bail!("input must have rank 2 or more ([N, C, d1..dk]), found shape {shape:?}");
    }
    let (n, c) = (shape[0], shape[1]);
    let d: usize = shape[2..].iter().product();
    let target = input(inputs, 1)?;
    if !target.dtype().is_int() {
        bail!("target must be an integer tensor, found {}", target.dtype());
    }
    let want: Vec<usize> = [n].into_iter().chain(shape[2..].iter().copied()).collect();
    if target.shape() != want {
        bail!("target must have shape {want:?} for an input of shape {shape:?}, found {:?}", target.shape());
    }
    let weight = match opt_input(inputs, 2) {
        Some(w) => {
            expect_float(w, "weight")?;
            if w.shape() != [c] {
                bail!("weight must have shape [{c}], found {:?}", w.shape());
            }
            Some(w.to_f64_vec())
        }
        None => None,
    };

    let mut v = x.to_f64_vec();
    if let LossOp::SoftmaxCrossEntropyLoss { .. } = op {
        log_softmax_axis1(&mut v, n, c, d);
    }

    // Each element's weighted loss, and the weights for the mean. An ignored target weighs 0.
    let targets = target.to_i64_vec();
    let mut losses = Vec::with_capacity(targets.len());
    let mut weight_sum = 0.0;
    for (i, &t) in targets.iter().enumerate() {
        if Some(t) == ignore_index {
            losses.push(0.0);
            continue;
        }
        if t < 0 || t as usize >= c {
            bail!("target value {t} at flat index {i} is out of range for {c} classes");
        }
        let t = t as usize;
        let w = weight.as_ref().map_or(1.0, |w| w[t]);
        let (batch, j) = (i / d, i % d);
        losses.push(-v[(batch * c + t) * d + j] * w);
        weight_sum += w;
    }

    let loss = match reduction {
        LossReduction::None => Tensor::from_vec(want, losses)?,
        LossReduction::Sum => Tensor::scalar(losses.iter().sum::<f64>()),
        // With neither weights nor ignored targets the weight sum is the element count.
        LossReduction::Mean => Tensor::scalar(losses.iter().sum::<f64>() / weight_sum),
    };
    let mut out = vec![loss.cast(dtype)];
    if num_outputs > 1 {
        if let LossOp::NegativeLogLikelihoodLoss { .. } = op {
            bail!("NegativeLogLikelihoodLoss has one output, {num_outputs} were requested");
        }
        out.push(Tensor::from_vec(shape.to_vec(), v)?.cast(dtype));
    }
    Ok(out)
}

/// Log-softmax over the classes of `[N, C, D]` values, in place.
fn log_softmax_axis1(v: &mut [f64], n: usize, c: usize, d: usize) {
    for batch in 0..n {
        let block = &mut v[batch * c * d..(batch + 1) * c * d];
        for j in 0..d {
            let m = (0..c).map(|k| block[k * d + j]).fold(f64::NEG_INFINITY, f64::max);
            let lse = (0..c).map(|k| (block[k * d + j] - m).exp()).sum::<f64>().ln();
            (0..c).for_each(|k| block[k * d + j] -= m + lse);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    fn i(shape: &[usize], v: Vec<i64>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Runs the kernel and compares every output: shape and type exactly, values within 1e-5.
    fn check(op: LossOp, inputs: &[Option<Tensor>], expected: &[Tensor]) {
        let ins: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
        let out = eval(&op, &ins, expected.len()).unwrap();
        assert_eq!(out.len(), expected.len());
        for (o, e) in out.iter().zip(expected) {
            assert_eq!((o.dtype(), o.shape()), (e.dtype(), e.shape()), "{o:?} vs {e:?}");
            for (a, b) in o.to_f64_vec().iter().zip(e.to_f64_vec()) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{o:?} vs {e:?}");
            }
        }
    }

    fn nll(reduction: LossReduction, ignore_index: Option<i64>) -> LossOp {
        LossOp::NegativeLogLikelihoodLoss { reduction, ignore_index }
    }

    #[test]
    fn nll_spatial_none_picks_the_target_class_per_position() {
        // input [1, 2, 3]: class 0 row then class 1 row.
        let x = f(&[1, 2, 3], vec![1.0, 2.0, 3.0, 10.0, 20.0, 30.0]);
        let t = i(&[1, 3], vec![1, 0, 1]);
        check(nll(LossReduction::None, None), &[Some(x), Some(t)], &[f(&[1, 3], vec![-10.0, -2.0, -30.0])]);
    }

    #[test]
    fn nll_weighted_mean_divides_by_the_weights_of_kept_targets() {
        let x = f(&[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let t = i(&[3], vec![0, 1, -1]);
        let w = f(&[2], vec![0.5, 2.0]);
        // (-1 * 0.5 + -4 * 2) / (0.5 + 2); the ignored target adds neither loss nor weight.
        let want = f(&[], vec![(-0.5 - 8.0) / 2.5]);
        check(nll(LossReduction::Mean, Some(-1)), &[Some(x), Some(t), Some(w)], &[want]);
    }

    #[test]
    fn sce_returns_log_softmax_over_classes() {
        let x = f(&[1, 2, 2], vec![0.0, 1.0, 0.0, 3.0]);
        let t = i(&[1, 2], vec![0, 1]);
        let lse0 = 2f32.ln();
        let lse1 = (1f32.exp() + 3f32.exp()).ln();
        let log_prob = f(&[1, 2, 2], vec![-lse0, 1.0 - lse1, -lse0, 3.0 - lse1]);
        let loss = f(&[], vec![lse0 + (lse1 - 3.0)]);
        let op = LossOp::SoftmaxCrossEntropyLoss { reduction: LossReduction::Sum, ignore_index: None };
        check(op, &[Some(x), Some(t)], &[loss, log_prob]);
    }

    #[test]
    fn out_of_range_target_is_an_error() {
        let x = f(&[1, 2], vec![1.0, 2.0]);
        let t = i(&[1], vec![2]);
        let err = eval(&nll(LossReduction::Sum, None), &[Some(&x), Some(&t)], 1).unwrap_err();
        assert!(err.0.contains("out of range"), "{err}");
    }
}
