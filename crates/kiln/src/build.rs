//! The build pipeline shared by `kiln build` and `kiln compare`: fix input shapes, run the IR
//! passes, calibrate and quantize to INT8 when asked, fuse, and convert to FP16 when asked.

use crate::{Error, OptimizeOptions};
use kiln_ir::passes::Fp16Report;
use kiln_ir::{Graph, Tensor};
use kiln_quant::{CalibAlgo, CalibCache, CalibOptions, LayerPrecision, Precision};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// INT8 options: where the scales come from and which layers keep a higher precision.
#[derive(Debug, Clone, Default)]
pub struct Int8Options {
    /// A directory of calibration batches: `.npz` files (one array per model input, by name)
    /// or, for a model with one input, `.npy` files; read in file-name order.
    pub calib_dir: Option<PathBuf>,
    /// A calibration cache: read when there is no calibration data, written after calibrating.
    pub calib_cache: Option<PathBuf>,
    /// The calibrator.
    pub algo: CalibAlgo,
    /// Where calibration runs the FP32 model.
    pub calib_device: CalibDevice,
}

/// Where calibration runs the FP32 model over its batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CalibDevice {
    /// The GPU where there is one (with NVRTC), else the CPU reference; also the CPU
    /// reference where the GPU cannot run the graph.
    #[default]
    Auto,
    /// The CPU reference.
    Cpu,
    /// The GPU, or an error.
    Cuda,
}

impl std::str::FromStr for CalibDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CalibDevice::Auto),
            "cpu" => Ok(CalibDevice::Cpu),
            "cuda" | "gpu" => Ok(CalibDevice::Cuda),
            _ => Err(format!("unknown calibration device '{s}' (auto, cpu or cuda)")),
        }
    }
}

/// The precision of a build's float work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FloatPrecision {
    /// FP32 throughout (matrix work may use TF32 on the GPU unless `no_tf32`).
    #[default]
    Fp32,
    /// FP16 after fusion, with FP32 graph inputs and outputs: see [`kiln_ir::passes::ToFp16`].
    Fp16,
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Concrete shapes for inputs with symbolic or unknown dims, by input name.
    pub shapes: HashMap<String, Vec<usize>>,
    /// IR passes and fusion.
    pub optimize: OptimizeOptions,
    /// INT8, when given.
    pub int8: Option<Int8Options>,
    /// The precision of float work (of the layers INT8 leaves, with INT8).
    pub precision: FloatPrecision,
    /// Layers (by node name) kept in another precision (`--precision NODE=P`): with INT8, any
    /// precision but INT8 keeps a convolution or matrix product out of INT8; with FP16,
    /// `Fp32` keeps the node (or the fused node that covers it) in FP32.
    pub overrides: HashMap<String, Precision>,
    /// Keeps FP32 matrix work out of TF32 on the GPU (the CUDA executor reads it; TF32 is
    /// allowed by default, as in TensorRT).
    pub no_tf32: bool,
}

/// A built graph and what the build did.
#[derive(Debug, Clone)]
pub struct Built {
    /// The optimized (quantized, fused) graph.
    pub graph: Graph,
    /// Fusion's report, when fusion ran.
    pub fusion: Option<kiln_fuse::FuseReport>,
    /// Each INT8-capable layer's precision, when INT8 was asked for.
    pub precisions: Vec<LayerPrecision>,
    /// The scales used, when INT8 was asked for.
    pub cache: Option<CalibCache>,
    /// Where calibration ran the model (and why not on the GPU, where it fell back), when it
    /// calibrated from data.
    pub calibrated_on: Option<String>,
    /// What the FP16 conversion did, when FP16 was asked for.
    pub fp16: Option<Fp16Report>,
    /// Whether FP32 matrix work may use TF32 on the GPU.
    pub tf32: bool,
}

/// Builds a graph: shapes, IR passes, INT8 calibration (on the GPU where there is one, see
/// [`CalibDevice`]) and quantization, fusion, and FP16 conversion (after fusion, so that
/// BatchNorm folding and constant work happen in FP32).
pub fn build(mut graph: Graph, opts: &BuildOptions) -> Result<Built, Error> {
    crate::specialize(&mut graph, &opts.shapes)?;
    let passes_only = OptimizeOptions { fuse: false, ..opts.optimize.clone() };
    crate::optimize_with(&mut graph, &passes_only)?;
    let mut calibrated_on = None;
    let (mut graph, precisions, cache) = match &opts.int8 {
        None => (graph, vec![], None),
        Some(q) => {
            // BatchNorm folds into the convolutions first, as TensorRT does, so that the
            // quantized weights are the folded ones and no float BatchNorm is left between an
            // integer convolution and its epilogue.
            let graph = if opts.optimize.fuse { fold_batchnorm(&graph)? } else { graph };
            let (cache, on) = scales(&graph, q)?;
            calibrated_on = on;
            let (quantized, report) = kiln_quant::quantize(&graph, &cache, &opts.overrides)?;
            (quantized, report, Some(cache))
        }
    };
    let fusion = if opts.optimize.fuse {
        let (fused, report) = kiln_fuse::fuse(&graph, &opts.optimize.fuse_options)?;
        graph = fused;
        Some(report)
    } else {
        None
    };
    let fp16 = match opts.precision {
        FloatPrecision::Fp32 => None,
        FloatPrecision::Fp16 => {
            let keep = opts.overrides.iter().filter(|(_, p)| **p == Precision::Fp32).map(|(n, _)| n.clone()).collect();
            let report = crate::to_fp16(&mut graph, keep)?;
            if opts.int8.is_some() && opts.optimize.fuse {
                graph = fuse_casts(&graph, &opts.optimize.fuse_options)?;
            }
            Some(report)
        }
    };
    Ok(Built { graph, fusion, precisions, cache, calibrated_on, fp16, tf32: !opts.no_tf32 })
}

/// An FP16 build of an INT8 graph, with the casts FP16 conversion added fused into their
/// neighbours (kiln-fuse's `elementwise` and `gemm_epilogue` families again): an epilogue over
/// an int32 accumulator computes in f32 and now stores f16 itself, and an f16 activation is
/// quantized by one kernel, not a cast and a quantize. BERT-base's INT8 engine at batch 32 went
/// from 313 steps to 241, with the same output on the CPU reference.
fn fuse_casts(graph: &Graph, opts: &kiln_fuse::FuseOptions) -> Result<Graph, Error> {
    only_families(graph, &["cleanup", "elementwise", "gemm_epilogue"], opts)
}

/// `graph` fused by the named rule families alone.
fn only_families(graph: &Graph, only: &[&str], opts: &kiln_fuse::FuseOptions) -> Result<Graph, Error> {
    let disabled =
        kiln_fuse::rules::families().into_iter().map(|(n, _)| n).filter(|n| !only.contains(n)).map(String::from);
    let opts = kiln_fuse::FuseOptions { disabled: disabled.collect(), ..opts.clone() };
    Ok(kiln_fuse::fuse(graph, &opts)?.0)
}

/// `graph` with each BatchNormalization folded into the convolution or matrix product before
/// it (kiln-fuse's `conv_bn` family alone; the rest of fusion comes after quantization).
fn fold_batchnorm(graph: &Graph) -> Result<Graph, Error> {
    only_families(graph, &["cleanup", "conv_bn"], &Default::default())
}

/// The calibration scales: from data (then written to the cache file, if one is named), with
/// where the model ran; or from the cache file alone.
fn scales(graph: &Graph, q: &Int8Options) -> Result<(CalibCache, Option<String>), Error> {
    let io = |p: &Path, e: std::io::Error| Error::Io { path: p.display().to_string(), msg: e.to_string() };
    match (&q.calib_dir, &q.calib_cache) {
        (Some(dir), cache_file) => {
            let batches = read_calibration_dir(dir, graph)?;
            let (cache, on) = calibrate(graph, &batches, q.algo, q.calib_device)?;
            if let Some(f) = cache_file {
                std::fs::write(f, cache.to_text()?).map_err(|e| io(f, e))?;
            }
            Ok((cache, Some(on)))
        }
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| io(f, e))?;
            Ok((CalibCache::parse(&text)?, None))
        }
        (None, None) => Err(Error::Quant(kiln_quant::QuantError::Data(
            "INT8 needs calibration data (--calib DIR) or a calibration cache (--calib-cache FILE)".into(),
        ))),
    }
}

/// Calibrates `graph` over `batches` on `device` (see [`CalibDevice`]): the scales, and where
/// the model ran, saying why not on the GPU where it fell back to the CPU reference.
pub fn calibrate(
    graph: &Graph,
    batches: &[Vec<Tensor>],
    algo: CalibAlgo,
    device: CalibDevice,
) -> Result<(CalibCache, String), Error> {
    let opts = CalibOptions { algo, bins: 2048 };
    let mut why_not = String::new();
    if device != CalibDevice::Cpu {
        // FP32 without TF32, as the CPU reference computes.
        let exec = kiln_runtime::exec::ExecOptions { tf32: false, ..Default::default() };
        let gpu = crate::gpu::GraphRunner::new(crate::gpu::GpuOptions { exec, ..Default::default() });
        let tried = gpu.map(|gpu| {
            let run = |g: &Graph, ins: &[Tensor]| gpu.run(g, ins).map_err(|e| e.to_string());
            (kiln_quant::calibrate(graph, batches, opts, &run), gpu.arch().to_string())
        });
        match (tried, device) {
            (Ok((Ok(cache), arch)), _) => return Ok((cache, format!("the GPU ({arch})"))),
            (Ok((Err(e), _)), CalibDevice::Cuda) => return Err(e.into()),
            (Err(e), CalibDevice::Cuda) => {
                return Err(Error::Quant(kiln_quant::QuantError::Data(format!(
                    "calibration on the GPU was asked for (--calib-device cuda), but {e}"
                ))))
            }
            (Ok((Err(e), _)), _) => why_not = format!(": the GPU could not run it ({e})"),
            (Err(e), _) => why_not = format!(" (no GPU: {e})"),
        }
    }
    let run = |g: &Graph, ins: &[Tensor]| crate::run_cpu(g, ins).map_err(|e| e.to_string());
    let cache = kiln_quant::calibrate(graph, batches, opts, &run)?;
    Ok((cache, format!("the CPU reference{why_not}")))
}

/// Reads the batches of a calibration directory for `graph`'s inputs. A batch larger than
/// the graph's fixed batch size is split into batches of that size.
pub fn read_calibration_dir(dir: &Path, graph: &Graph) -> Result<Vec<Vec<Tensor>>, Error> {
    let io = |p: &Path, e: std::io::Error| Error::Io { path: p.display().to_string(), msg: e.to_string() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("npy" | "npz")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Io { path: dir.display().to_string(), msg: "no .npy or .npz calibration files".into() });
    }
    let names: Vec<String> = graph.inputs.iter().map(|&i| graph.node(i).outputs[0].name.clone()).collect();
    let mut batches = vec![];
    for f in &files {
        let mut by_name: HashMap<String, Tensor> = HashMap::new();
        if f.extension().is_some_and(|e| e == "npz") {
            let file = std::fs::File::open(f).map_err(|e| io(f, e))?;
            let mut zip = zip::ZipArchive::new(file)
                .map_err(|e| Error::Npy { path: f.display().to_string(), msg: e.to_string() })?;
            for i in 0..zip.len() {
                let mut entry =
                    zip.by_index(i).map_err(|e| Error::Npy { path: f.display().to_string(), msg: e.to_string() })?;
                let name = entry.name().trim_end_matches(".npy").to_string();
                let mut bytes = vec![];
                entry.read_to_end(&mut bytes).map_err(|e| io(f, e))?;
                let t = crate::npy::read_bytes(&bytes)
                    .map_err(|m| Error::Npy { path: format!("{}:{name}", f.display()), msg: m })?;
                by_name.insert(name, t);
            }
        } else {
            if names.len() != 1 {
                return Err(Error::Npy {
                    path: f.display().to_string(),
                    msg: format!(
                        "a model with {} inputs takes .npz calibration files (one array per input)",
                        names.len()
                    ),
                });
            }
            by_name.insert(names[0].clone(), crate::npy::read(f)?);
        }
        let mut inputs = vec![];
        for (k, &id) in names.iter().zip(&graph.inputs) {
            let t = by_name.remove(k).ok_or_else(|| Error::Npy {
                path: f.display().to_string(),
                msg: format!("no array for input '{k}' (arrays: {:?})", by_name.keys().collect::<Vec<_>>()),
            })?;
            inputs.push((t, graph.node(id).outputs[0].ty.concrete_shape()));
        }
        batches.extend(split_batches(inputs).map_err(|m| Error::Npy { path: f.display().to_string(), msg: m })?);
    }
    Ok(batches)
}

/// Splits one batch of inputs into batches of the graph's fixed shapes (dim 0 divides), or
/// returns it whole when the graph's shapes are not fixed.
fn split_batches(inputs: Vec<(Tensor, Option<Vec<usize>>)>) -> Result<Vec<Vec<Tensor>>, String> {
    let mut parts: Option<usize> = None;
    for (t, want) in &inputs {
        let Some(want) = want else { continue };
        if t.shape() == want.as_slice() {
            parts = parts.or(Some(1));
            continue;
        }
        let ok = t.rank() == want.len() && t.shape()[1..] == want[1..] && want[0] > 0 && t.shape()[0] % want[0] == 0;
        if !ok {
            return Err(format!("calibration array of shape {:?} does not fit the input shape {want:?}", t.shape()));
        }
        let k = t.shape()[0] / want[0];
        if parts.is_some_and(|p| p != k) {
            return Err("calibration arrays split into different numbers of batches".into());
        }
        parts = Some(k);
    }
    let k = parts.unwrap_or(1);
    if k == 1 {
        return Ok(vec![inputs.into_iter().map(|(t, _)| t).collect()]);
    }
    let mut out = vec![vec![]; k];
    for (t, _) in inputs {
        let per = t.len() / k;
        let mut shape = t.shape().to_vec();
        shape[0] /= k;
        let v = t.to_f64_vec();
        for (j, o) in out.iter_mut().enumerate() {
            let piece =
                Tensor::from_vec(shape.clone(), v[j * per..(j + 1) * per].to_vec()).map_err(|e| e.to_string())?;
            o.push(piece.cast(t.dtype()));
        }
    }
    Ok(out)
}
