//! INT8 quantization: calibration (entropy, min-max, percentile and MSE calibrators over
//! histograms of activations), the calibration cache, and the explicit (QDQ) INT8 graph.
//!
//! The flow: [`collect`] runs the FP32 graph over calibration batches (on whatever executor the
//! caller passes: the CPU reference or a GPU engine) and histograms every activation an INT8
//! layer reads; [`calibrate`] turns the histograms into scales with a [`CalibAlgo`], giving a
//! [`CalibCache`] that can be written, edited and reused; [`quantize`] inserts the QDQ pairs.

#![warn(missing_docs)]

pub mod cache;
pub mod calibrate;
pub mod collect;
mod histogram;
pub mod quantize;

pub use cache::CalibCache;
pub use calibrate::{threshold, CalibAlgo};
pub use collect::{calibrated_values, collect, Runner};
pub use histogram::Histogram;
pub use quantize::{quantize, quantize_weights, LayerPrecision, Precision};

use kiln_ir::{Graph, Tensor};

/// Why quantization failed.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The calibration data or the run over it.
    #[error("calibration: {0}")]
    Data(String),
    /// A calibration cache file.
    #[error("calibration cache: {0}")]
    Cache(String),
    /// The graph cannot be quantized as asked.
    #[error("quantization: {0}")]
    Graph(String),
}

/// How to calibrate.
#[derive(Debug, Clone, Copy)]
pub struct CalibOptions {
    /// The calibrator.
    pub algo: CalibAlgo,
    /// Histogram bins (2048 by default, as TensorRT).
    pub bins: usize,
}

impl Default for CalibOptions {
    fn default() -> CalibOptions {
        CalibOptions { algo: CalibAlgo::Entropy, bins: 2048 }
    }
}

/// Calibrates `g` over `batches` (inputs in graph-input order) run by `run`: one symmetric INT8
/// scale (`threshold / 127`) per activation that an INT8 layer reads.
///
/// Softmax outputs are the exception: they are probabilities, bounded by construction, and
/// the few large ones carry the signal, so they keep their whole range (min-max) whatever the
/// calibrator. Entropy calibration would clip them at its smallest candidate threshold (128 of
/// 2048 bins), which flattens attention.
pub fn calibrate(
    g: &Graph,
    batches: &[Vec<Tensor>],
    opts: CalibOptions,
    run: &Runner<'_>,
) -> Result<CalibCache, QuantError> {
    let hists = collect(g, batches, opts.bins, run)?;
    let bounded: std::collections::HashSet<String> = calibrated_values(g)
        .into_iter()
        .filter(|(_, v)| matches!(g.node(v.node).op, kiln_ir::Op::Norm(kiln_ir::ops::NormOp::Softmax { .. })))
        .map(|(n, _)| n)
        .collect();
    let scales = hists
        .into_iter()
        .map(|(name, h)| {
            let algo = if bounded.contains(&name) { CalibAlgo::MinMax } else { opts.algo };
            let t = threshold(&h, algo);
            // An activation that is zero throughout quantizes exactly with any scale.
            (name, if t > 0.0 { t / 127.0 } else { 1.0 })
        })
        .collect();
    Ok(CalibCache { algo: opts.algo, kiln_version: env!("CARGO_PKG_VERSION").to_string(), scales })
}
