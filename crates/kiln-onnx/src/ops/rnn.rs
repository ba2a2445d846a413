//! Importers for the recurrent layers: RNN, GRU, LSTM.

use super::Registry;
use crate::{ImportError, NodeCtx};
use kiln_ir::ops::rnn::{RecurrentAttrs, RnnActivation, RnnDirection};
use kiln_ir::ops::RnnOp;
use kiln_ir::Op;

pub(super) fn register(reg: &mut Registry) {
    reg.insert("RNN", rnn);
    reg.insert("GRU", gru);
    reg.insert("LSTM", lstm);
}

fn rnn(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Rnn(RnnOp::Rnn(attrs(cx, &["Tanh"])?)))
}

fn gru(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Rnn(RnnOp::Gru {
        attrs: attrs(cx, &["Sigmoid", "Tanh"])?,
        linear_before_reset: cx.i64_or("linear_before_reset", 0)? != 0,
    }))
}

fn lstm(cx: &NodeCtx<'_>) -> Result<Op, ImportError> {
    Ok(Op::Rnn(RnnOp::Lstm {
        attrs: attrs(cx, &["Sigmoid", "Tanh", "Tanh"])?,
        input_forget: cx.bool_or("input_forget", false)?,
    }))
}

/// Reads the attributes shared by the three layers; `defaults` are the cell's activations for
/// one direction.
fn attrs(cx: &NodeCtx<'_>, defaults: &[&str]) -> Result<RecurrentAttrs, ImportError> {
    let direction = match cx.string_or("direction", "forward")?.as_str() {
        "forward" => RnnDirection::Forward,
        "reverse" => RnnDirection::Reverse,
        "bidirectional" => RnnDirection::Bidirectional,
        d => return Err(cx.attr_error("direction", format!("expected forward, reverse or bidirectional, found {d}"))),
    };
    let dirs = direction.count();
    let names: Vec<String> = match cx.get_strings("activations")? {
        Some(v) => v,
        None => defaults.iter().cycle().take(defaults.len() * dirs).map(|s| s.to_string()).collect(),
    };
    if names.len() != defaults.len() * dirs {
        return Err(cx.attr_error(
            "activations",
            format!("expected {} functions for {dirs} direction(s), found {}", defaults.len() * dirs, names.len()),
        ));
    }
    // The alpha and beta lists are consumed in order by the functions that take them.
    let alphas = cx.get_floats("activation_alpha")?.unwrap_or_default();
    let betas = cx.get_floats("activation_beta")?.unwrap_or_default();
    let (mut ai, mut bi) = (alphas.iter(), betas.iter());
    let mut alpha = |d: f32| ai.next().copied().unwrap_or(d);
    let mut beta = |d: f32| bi.next().copied().unwrap_or(d);
    let mut activations = Vec::with_capacity(names.len());
    for n in &names {
        activations.push(match n.to_ascii_lowercase().as_str() {
            "relu" => RnnActivation::Relu,
            "tanh" => RnnActivation::Tanh,
            "sigmoid" => RnnActivation::Sigmoid,
            "affine" => RnnActivation::Affine { alpha: alpha(1.0), beta: beta(0.0) },
            "leakyrelu" => RnnActivation::LeakyRelu { alpha: alpha(0.01) },
            "thresholdedrelu" => RnnActivation::ThresholdedRelu { alpha: alpha(1.0) },
            "scaledtanh" => RnnActivation::ScaledTanh { alpha: alpha(1.0), beta: beta(1.0) },
            "hardsigmoid" => RnnActivation::HardSigmoid { alpha: alpha(0.2), beta: beta(0.5) },
            "elu" => RnnActivation::Elu { alpha: alpha(1.0) },
            "softsign" => RnnActivation::Softsign,
            "softplus" => RnnActivation::Softplus,
            _ => return Err(cx.attr_error("activations", format!("unknown activation function {n}"))),
        });
    }
    let hidden_size = match cx.get_i64("hidden_size")? {
        None => None,
        Some(h) if h > 0 => Some(h as usize),
        Some(h) => return Err(cx.attr_error("hidden_size", format!("expected a positive size, found {h}"))),
    };
    let clip = match cx.get_f32("clip")? {
        Some(c) if c > 0.0 => Some(c),
        Some(c) => return Err(cx.attr_error("clip", format!("expected a positive threshold, found {c}"))),
        None => None,
    };
    let batch_first = match cx.i64_or("layout", 0)? {
        0 => false,
        1 => true,
        l => return Err(cx.attr_error("layout", format!("expected 0 or 1, found {l}"))),
    };
    Ok(RecurrentAttrs { hidden_size, direction, activations, clip, batch_first })
}
