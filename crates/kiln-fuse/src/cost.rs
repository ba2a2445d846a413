//! The cost model: each node's estimated time on a target GPU, which extraction minimizes over
//! the whole graph.
//!
//! A node that launches work costs `max(flops / rate, bytes / bandwidth) + launch`: it is bound
//! by arithmetic or by memory traffic, plus the fixed price of a launch (plus 1% of the shorter
//! of the two, since overlap is never perfect; this breaks ties toward less arithmetic). Views (Reshape,
//! Squeeze, Identity...) and leaves cost nothing. The figures of a target are in one place,
//! [`GpuProfile`]; rates are dense (no sparsity).

use kiln_ir::ops::{FusedOp, LayoutOp, LinalgOp};
use kiln_ir::{DType, Op, TypeInfo};

/// What the cost model knows of a GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuProfile {
    /// A name for reports.
    pub name: &'static str,
    /// Dense FP16/BF16 tensor-core rate, flop/s.
    pub fp16_flops: f64,
    /// FP32 rate (CUDA cores), flop/s; also used for f64 and elementwise math.
    pub fp32_flops: f64,
    /// Dense INT8 tensor-core rate, op/s.
    pub int8_ops: f64,
    /// Memory bandwidth, bytes/s.
    pub bandwidth: f64,
    /// The fixed time of one kernel launch, s.
    pub launch: f64,
}

impl GpuProfile {
    /// NVIDIA H100 SXM: 989 TFLOP/s FP16, 67 TFLOP/s FP32, 1979 TOP/s INT8 (dense), 3.35 TB/s
    /// of HBM3, and about 3 µs per launch.
    pub const H100: GpuProfile = GpuProfile {
        name: "H100-SXM",
        fp16_flops: 989e12,
        fp32_flops: 67e12,
        int8_ops: 1979e12,
        bandwidth: 3.35e12,
        launch: 3e-6,
    };
}

impl Default for GpuProfile {
    fn default() -> GpuProfile {
        GpuProfile::H100
    }
}

/// The share of the shorter of compute and memory time that does not hide under the longer:
/// small, but it makes needless arithmetic cost something.
const OVERLAP_LOSS: f64 = 0.01;

/// Elements assumed for a value whose shape is not known statically.
const UNKNOWN_ELEMS: f64 = 65536.0;

fn elems(t: &TypeInfo) -> f64 {
    match &t.shape {
        Some(s) => s.iter().map(|d| d.known().map_or(UNKNOWN_ELEMS.sqrt(), |n| n as f64)).product(),
        None => UNKNOWN_ELEMS,
    }
}

fn bytes(t: &TypeInfo) -> f64 {
    elems(t) * t.dtype.map_or(4, |d| d.size().max(1)) as f64
}

fn dims(t: &TypeInfo) -> Vec<f64> {
    t.shape.as_ref().map(|s| s.iter().map(|d| d.known().map_or(1.0, |n| n as f64)).collect()).unwrap_or_default()
}

/// Whether the op moves no data: a view of its input, or a leaf.
pub fn is_free(op: &Op) -> bool {
    matches!(
        op,
        Op::Input
            | Op::Const(_)
            | Op::Layout(
                LayoutOp::Identity
                    | LayoutOp::Dropout
                    | LayoutOp::Reshape { .. }
                    | LayoutOp::Flatten { .. }
                    | LayoutOp::Squeeze { .. }
                    | LayoutOp::Unsqueeze { .. }
                    | LayoutOp::Shape { .. }
                    | LayoutOp::Size
            )
    )
}

/// The arithmetic of a matrix op, in multiply-adds times two.
fn linalg_flops(op: &LinalgOp, ins: &[TypeInfo], out: &TypeInfo) -> f64 {
    let a = ins.first().map(dims).unwrap_or_default();
    let w = ins.get(1).map(dims).unwrap_or_default();
    match op {
        LinalgOp::MatMul | LinalgOp::MatMulInteger => 2.0 * elems(out) * a.last().copied().unwrap_or(1.0),
        LinalgOp::Gemm { trans_a, .. } => {
            let k = if *trans_a { a.first() } else { a.get(1) };
            2.0 * elems(out) * k.copied().unwrap_or(1.0)
        }
        LinalgOp::Conv(_) | LinalgOp::ConvInteger(_) => 2.0 * elems(out) * w.iter().skip(1).product::<f64>(),
        LinalgOp::ConvTranspose(_) => 2.0 * ins.first().map(elems).unwrap_or(0.0) * w.iter().skip(1).product::<f64>(),
        _ => elems(out),
    }
}

/// The rate matrix work of this element type runs at.
fn matrix_rate(p: &GpuProfile, dtype: Option<DType>) -> f64 {
    match dtype {
        Some(DType::F16 | DType::BF16) => p.fp16_flops,
        Some(DType::I8 | DType::U8) => p.int8_ops,
        _ => p.fp32_flops,
    }
}

/// The estimated time of one node, in seconds, from its input and output types.
pub fn node_cost(p: &GpuProfile, op: &Op, ins: &[TypeInfo], outs: &[TypeInfo]) -> f64 {
    if is_free(op) {
        return 0.0;
    }
    let out = outs.first().cloned().unwrap_or_default();
    let dtype = ins.first().and_then(|t| t.dtype);
    let (flops, rate) = match op {
        Op::Linalg(l) => (linalg_flops(l, ins, &out), matrix_rate(p, dtype)),
        Op::Fused(FusedOp::Epilogue { base, base_inputs, expr }) => {
            let base_ins = &ins[..(*base_inputs).min(ins.len())];
            let f = linalg_flops(base, base_ins, &out) + expr.num_ops() as f64 * elems(&out);
            (f, matrix_rate(p, dtype))
        }
        Op::Fused(FusedOp::Elementwise(expr)) => (expr.num_ops() as f64 * elems(&out), p.fp32_flops),
        Op::Fused(FusedOp::PackedAttention { .. }) => {
            let d = dims(&out);
            let seq = d.get(1).copied().unwrap_or(1.0);
            (4.0 * elems(&out) * seq, matrix_rate(p, dtype))
        }
        Op::Attention(_) => {
            let k = ins.get(1).map(dims).unwrap_or_default();
            let kv_seq = if k.len() == 4 { k[2] } else { k.get(1).copied().unwrap_or(1.0) };
            (4.0 * elems(&out) * kv_seq, matrix_rate(p, dtype))
        }
        _ => (elems(&out), p.fp32_flops),
    };
    let traffic: f64 = ins.iter().map(bytes).sum::<f64>() + outs.iter().map(bytes).sum::<f64>();
    let (compute, memory) = (flops / rate, traffic / p.bandwidth);
    compute.max(memory) + OVERLAP_LOSS * compute.min(memory) + p.launch
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::ops::elementwise::UnaryOp;
    use kiln_ir::ops::ElementwiseOp;

    #[test]
    fn big_matmul_is_compute_bound_and_small_relu_is_launch_bound() {
        let p = GpuProfile::H100;
        let a = TypeInfo::known(DType::F16, &[4096, 4096]);
        let t = node_cost(&p, &Op::Linalg(LinalgOp::MatMul), &[a.clone(), a.clone()], std::slice::from_ref(&a));
        let compute = 2.0 * 4096f64.powi(3) / p.fp16_flops;
        assert!((t - compute - p.launch) / t < 0.01, "{t} vs {compute}");
        let small = TypeInfo::known(DType::F32, &[8]);
        let relu = Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu));
        let t = node_cost(&p, &relu, std::slice::from_ref(&small), std::slice::from_ref(&small));
        assert!((t - p.launch) / p.launch < 0.01);
        let view = Op::Layout(LayoutOp::Identity);
        assert_eq!(node_cost(&p, &view, std::slice::from_ref(&a), std::slice::from_ref(&a)), 0.0);
    }
}
