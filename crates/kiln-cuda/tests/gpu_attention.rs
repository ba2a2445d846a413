//! ONNX Attention (opset 23) and RotaryEmbedding on the GPU against the CPU executor: one-node
//! graphs planned, run and compared output by output (present_key, present_value and
//! qk_matmul_output included). Without a GPU every test prints a skip reason and passes.

mod common;
use common::*;

use kiln_ir::ops::attention::{AttentionAttrs, QkOutputMode};
use kiln_ir::ops::AttentionOp;
use kiln_ir::{DType, Op, Tensor};

fn attrs() -> AttentionAttrs {
    AttentionAttrs {
        q_num_heads: None,
        kv_num_heads: None,
        is_causal: false,
        scale: None,
        softcap: 0.0,
        qk_matmul_output_mode: QkOutputMode::Scores,
        softmax_precision: None,
    }
}

fn tolerance(dt: DType) -> (f64, f64) {
    if dt == DType::F32 {
        (2e-5, 1e-4)
    } else {
        (4e-3, 1e-2)
    }
}

/// Q, K and V of `[b, h, s, d]` (4-D) or `[b, s, h * d]` (3-D) shapes.
struct Case {
    b: usize,
    hq: usize,
    hk: usize,
    sq: usize,
    sk: usize,
    d: usize,
    dv: usize,
    three_d: bool,
}

impl Case {
    fn shape(&self, h: usize, s: usize, e: usize) -> Vec<usize> {
        if self.three_d {
            vec![self.b, s, h * e]
        } else {
            vec![self.b, h, s, e]
        }
    }
    fn qkv(&self, rng: &mut Rng, dt: DType) -> [Tensor; 3] {
        [
            rand_tensor(rng, &self.shape(self.hq, self.sq, self.d), -1.0, 1.0, dt),
            rand_tensor(rng, &self.shape(self.hk, self.sk, self.d), -1.0, 1.0, dt),
            rand_tensor(rng, &self.shape(self.hk, self.sk, self.dv), -1.0, 1.0, dt),
        ]
    }
    fn attrs(&self, a: AttentionAttrs) -> AttentionAttrs {
        if self.three_d {
            AttentionAttrs { q_num_heads: Some(self.hq), kv_num_heads: Some(self.hk), ..a }
        } else {
            a
        }
    }
}

/// Runs Attention with `data` as graph inputs after Q, K and V and `consts` after those, and
/// compares all `outputs` outputs.
#[allow(clippy::too_many_arguments)]
fn check(
    what: &str,
    c: &Case,
    a: AttentionAttrs,
    dt: DType,
    rng: &mut Rng,
    extra: &[Tensor],
    consts: &[Option<Tensor>],
    outputs: usize,
) {
    let [q, k, v] = c.qkv(rng, dt);
    let mut data = vec![&q, &k, &v];
    data.extend(extra);
    let op = Op::Attention(AttentionOp::Attention(c.attrs(a)));
    let (g, inputs) = one_node(op, &data, consts, outputs);
    plans(&format!("{what} {dt}"), &g);
    let Some(lib) = lib() else { return };
    let (atol, rtol) = tolerance(dt);
    plan_matches(lib, &format!("{what} {dt}"), &g, &inputs, atol, rtol);
}

/// The graph plans (checked with or without a GPU).
fn plans(what: &str, g: &kiln_ir::Graph) {
    if let Err(e) = kiln_cuda::plan::plan(g) {
        panic!("{what}: {e}");
    }
}

const SMALL: Case = Case { b: 2, hq: 3, hk: 3, sq: 4, sk: 6, d: 8, dv: 8, three_d: false };

#[test]
fn causal_attention() {
    let mut rng = Rng::new(31);
    let causal = AttentionAttrs { is_causal: true, ..attrs() };
    for dt in [DType::F32, DType::F16] {
        check("causal 4-D d8", &SMALL, causal.clone(), dt, &mut rng, &[], &[], 1);
        check("causal 3-D d8", &Case { three_d: true, ..SMALL }, causal.clone(), dt, &mut rng, &[], &[], 1);
        // Query rows past the keys and keys past the rows, odd sizes, the multi-row kernel
        // (over 256 blocks) skipping the tiles past the diagonal.
        let long = Case { b: 4, hq: 16, hk: 16, sq: 129, sk: 129, d: 64, dv: 64, three_d: false };
        check("causal d64 s129", &long, causal.clone(), dt, &mut rng, &[], &[], 1);
        let wide = Case { b: 1, hq: 2, hk: 2, sq: 3, sk: 50, d: 32, dv: 32, three_d: false };
        check("causal sq3 sk50", &wide, causal.clone(), dt, &mut rng, &[], &[], 1);
        let tall = Case { b: 1, hq: 2, hk: 2, sq: 50, sk: 3, d: 16, dv: 16, three_d: false };
        check("causal sq50 sk3", &tall, causal.clone(), dt, &mut rng, &[], &[], 1);
    }
}

#[test]
fn causal_attention_with_past_and_present() {
    let mut rng = Rng::new(32);
    let causal = AttentionAttrs { is_causal: true, ..attrs() };
    for dt in [DType::F32, DType::F16] {
        for three_d in [false, true] {
            for (hq, hk) in [(3, 3), (6, 2)] {
                let c = Case { b: 2, hq, hk, sq: 4, sk: 5, d: 8, dv: 8, three_d };
                let pk = rand_tensor(&mut rng, &[2, hk, 7, 8], -1.0, 1.0, dt);
                let pv = rand_tensor(&mut rng, &[2, hk, 7, 8], -1.0, 1.0, dt);
                let what = format!("causal past 3-D={three_d} heads {hq}/{hk}");
                check(&what, &c, causal.clone(), dt, &mut rng, &[], &[None, Some(pk), Some(pv)], 3);
            }
        }
    }
}

#[test]
fn grouped_query_attention() {
    let mut rng = Rng::new(33);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for three_d in [false, true] {
            let c = Case { b: 2, hq: 9, hk: 3, sq: 4, sk: 6, d: 8, dv: 8, three_d };
            check(&format!("gqa 3-D={three_d}"), &c, attrs(), dt, &mut rng, &[], &[], 1);
            let big = Case { b: 2, hq: 8, hk: 2, sq: 50, sk: 50, d: 64, dv: 64, three_d };
            let mask = rand_tensor(&mut rng, &[50, 50], -2.0, 2.0, dt);
            check(&format!("gqa d64 mask 3-D={three_d}"), &big, attrs(), dt, &mut rng, &[mask], &[], 1);
        }
    }
}

#[test]
fn softcapped_attention() {
    let mut rng = Rng::new(34);
    for dt in [DType::F32, DType::F16] {
        let capped = AttentionAttrs { softcap: 2.0, ..attrs() };
        check("softcap", &SMALL, capped.clone(), dt, &mut rng, &[], &[], 1);
        // Masked keys (-inf) come out of the cap as -softcap, as the reference has them.
        let mask = Tensor::from_vec(
            vec![4, 6],
            (0..24).map(|i| if i % 5 == 1 { f32::NEG_INFINITY } else { (i % 7) as f32 * 0.25 }).collect::<Vec<_>>(),
        )
        .unwrap()
        .cast(dt);
        check("softcap mask", &SMALL, capped.clone(), dt, &mut rng, &[mask], &[], 1);
        let both = AttentionAttrs { is_causal: true, softcap: 3.0, ..attrs() };
        let c = Case { b: 1, hq: 2, hk: 2, sq: 40, sk: 40, d: 32, dv: 32, three_d: true };
        check("softcap causal", &c, both, dt, &mut rng, &[], &[], 1);
    }
}

#[test]
fn small_and_unequal_head_sizes() {
    let mut rng = Rng::new(35);
    for dt in [DType::F32, DType::F16] {
        for (d, dv) in [(4, 4), (8, 8), (8, 10), (64, 32), (24, 128), (1, 3)] {
            for three_d in [false, true] {
                let c = Case { b: 2, hq: 3, hk: 3, sq: 5, sk: 37, d, dv, three_d };
                check(&format!("d {d} dv {dv} 3-D={three_d}"), &c, attrs(), dt, &mut rng, &[], &[], 1);
            }
        }
        let scaled = AttentionAttrs { scale: Some(0.01), ..attrs() };
        check("dv 10 scaled", &Case { dv: 10, ..SMALL }, scaled, dt, &mut rng, &[], &[], 1);
    }
}

#[test]
fn bool_and_short_masks() {
    let mut rng = Rng::new(36);
    for dt in [DType::F32, DType::F16] {
        let bools = |shape: &[usize], rng: &mut Rng| {
            let n: usize = shape.iter().product();
            Tensor::from_vec(shape.to_vec(), (0..n).map(|_| rng.below(4) != 0).collect::<Vec<bool>>()).unwrap()
        };
        for shape in [vec![4, 6], vec![2, 3, 4, 6], vec![2, 1, 4, 6], vec![1, 6]] {
            let m = bools(&shape, &mut rng);
            check(&format!("bool mask {shape:?}"), &SMALL, attrs(), dt, &mut rng, &[m], &[], 1);
        }
        // A row that attends nothing is NaN, as in the reference.
        let mut none = vec![true; 24];
        none[6..12].fill(false);
        let m = Tensor::from_vec(vec![4, 6], none).unwrap();
        check("bool mask with an empty row", &SMALL, attrs(), dt, &mut rng, &[m], &[], 1);
        // Masks shorter than the keys: the rest is masked out.
        let short = rand_tensor(&mut rng, &[2, 3, 4, 4], -1.0, 1.0, dt);
        check("additive mask of 4 of 6 keys", &SMALL, attrs(), dt, &mut rng, &[short], &[], 1);
        let short_bool = bools(&[4, 5], &mut rng);
        let causal = AttentionAttrs { is_causal: true, ..attrs() };
        check("bool mask of 5 of 6 keys, causal", &SMALL, causal, dt, &mut rng, &[short_bool], &[], 1);
    }
}

#[test]
fn key_padding_lengths() {
    let mut rng = Rng::new(37);
    let c = Case { dv: 10, ..SMALL };
    let mask = rand_tensor(&mut rng, &[2, 3, 4, 4], -1.0, 1.0, DType::F32);
    let nonpad = Tensor::from_vec(vec![2], vec![3i64, 6]).unwrap();
    check("nonpad_kv_seqlen", &c, attrs(), DType::F32, &mut rng, &[mask], &[None, None, Some(nonpad)], 1);
}

#[test]
fn present_outputs() {
    let mut rng = Rng::new(38);
    for dt in [DType::F32, DType::F16] {
        for three_d in [false, true] {
            let c = Case { three_d, dv: 10, ..SMALL };
            // Without a cache present_key and present_value are K and V, heads first.
            check(&format!("present 3-D={three_d}"), &c, attrs(), dt, &mut rng, &[], &[], 3);
            let mask = rand_tensor(&mut rng, &[4, 18], -1.0, 1.0, dt);
            let pk = rand_tensor(&mut rng, &[2, 3, 12, 8], -1.0, 1.0, dt);
            let pv = rand_tensor(&mut rng, &[2, 3, 12, 10], -1.0, 1.0, dt);
            check(&format!("past and present 3-D={three_d}"), &c, attrs(), dt, &mut rng, &[mask, pk, pv], &[], 3);
        }
        // A cache the graph does not return still feeds the attention.
        let pk = rand_tensor(&mut rng, &[2, 3, 12, 8], -1.0, 1.0, dt);
        let pv = rand_tensor(&mut rng, &[2, 3, 12, 8], -1.0, 1.0, dt);
        check("past without present", &SMALL, attrs(), dt, &mut rng, &[], &[None, Some(pk), Some(pv)], 1);
    }
}

#[test]
fn qk_matmul_output_modes() {
    let mut rng = Rng::new(39);
    let modes = [QkOutputMode::Scores, QkOutputMode::Masked, QkOutputMode::Softcapped, QkOutputMode::Probabilities];
    for dt in [DType::F32, DType::F16] {
        for mode in modes {
            for (causal, softcap) in [(false, 0.0), (true, 0.0), (false, 2.0)] {
                let a = AttentionAttrs { qk_matmul_output_mode: mode, is_causal: causal, softcap, ..attrs() };
                let what = format!("qk {mode:?} causal={causal} softcap={softcap}");
                let mask = rand_tensor(&mut rng, &[2, 1, 4, 18], -1.0, 1.0, dt);
                let pk = rand_tensor(&mut rng, &[2, 3, 12, 8], -1.0, 1.0, dt);
                let pv = rand_tensor(&mut rng, &[2, 3, 12, 8], -1.0, 1.0, dt);
                check(&what, &SMALL, a.clone(), dt, &mut rng, &[mask, pk, pv], &[], 4);
                let gqa = Case { b: 1, hq: 4, hk: 2, sq: 3, sk: 70, d: 16, dv: 16, three_d: true };
                check(&format!("{what} gqa"), &gqa, a, dt, &mut rng, &[], &[], 4);
            }
        }
    }
}

fn rope(interleaved: bool, rotary_embedding_dim: usize, num_heads: Option<usize>) -> Op {
    Op::Attention(AttentionOp::RotaryEmbedding { interleaved, rotary_embedding_dim, num_heads })
}

#[test]
fn rotary_embedding_variants() {
    let lib = lib();
    let mut rng = Rng::new(40);
    let (b, h, s, d) = (2usize, 3usize, 5usize, 8usize);
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for interleaved in [false, true] {
            for rd in [0, 4, 8] {
                let half = if rd == 0 { d / 2 } else { rd / 2 };
                for three_d in [false, true] {
                    let (shape, heads) = if three_d { (vec![b, s, h * d], Some(h)) } else { (vec![b, h, s, d], None) };
                    let x = rand_tensor(&mut rng, &shape, -2.0, 2.0, dt);
                    let (atol, rtol) = tolerance(dt);
                    let what = format!("rope {dt} interleaved={interleaved} rd={rd} 3-D={three_d}");
                    // With position ids (a graph input, read at run time) into a cache of 50.
                    let cos = rand_tensor(&mut rng, &[50, half], -1.0, 1.0, dt);
                    let sin = rand_tensor(&mut rng, &[50, half], -1.0, 1.0, dt);
                    let ids =
                        Tensor::from_vec(vec![b, s], (0..b * s).map(|_| rng.below(50) as i64).collect::<Vec<_>>())
                            .unwrap();
                    let (g, inputs) = one_node(rope(interleaved, rd, heads), &[&x, &cos, &sin, &ids], &[], 1);
                    plans(&what, &g);
                    if let Some(lib) = lib {
                        plan_matches(lib, &format!("{what} position_ids"), &g, &inputs, atol, rtol);
                    }
                    // Without: a cache per batch and position, or one for every batch.
                    for cb in [b, 1] {
                        let cos = rand_tensor(&mut rng, &[cb, s, half], -1.0, 1.0, dt);
                        let sin = rand_tensor(&mut rng, &[cb, s, half], -1.0, 1.0, dt);
                        let (g, inputs) = one_node(rope(interleaved, rd, heads), &[&x, &cos, &sin], &[], 1);
                        plans(&what, &g);
                        if let Some(lib) = lib {
                            plan_matches(lib, &format!("{what} cache batch {cb}"), &g, &inputs, atol, rtol);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn rotary_embedding_refuses_bad_position_ids_at_run_time() {
    let Some(lib) = lib() else { return };
    let mut rng = Rng::new(41);
    let x = rand_tensor(&mut rng, &[1, 2, 3, 4], -1.0, 1.0, DType::F32);
    let cos = rand_tensor(&mut rng, &[10, 2], -1.0, 1.0, DType::F32);
    let sin = rand_tensor(&mut rng, &[10, 2], -1.0, 1.0, DType::F32);
    let good = Tensor::from_vec(vec![1, 3], vec![0i64, 9, 4]).unwrap();
    let (g, _) = one_node(rope(false, 0, None), &[&x, &cos, &sin, &good], &[], 1);
    let plan = kiln_cuda::plan::plan(&g).unwrap();
    let bad = Tensor::from_vec(vec![1, 3], vec![0i64, 10, 4]).unwrap();
    let err = lib.run_plan(&plan, &[x, cos, sin, bad]).unwrap_err().to_string();
    assert!(err.contains("position id"), "{err}");
}

/// The tensor-core kernels (`attention_mma_*`): f16 and bf16, head sizes 64 and 128, blocks of
/// four warps (enough blocks to fill the GPU) and of one; row and key counts off the 16-row and
/// 64-key tiles; additive, bool and causal masks and softcapping; a row that attends nothing.
#[test]
fn tensor_core_attention() {
    let mut rng = Rng::new(39);
    let kernel = |g: &kiln_ir::Graph| -> String {
        let plan = kiln_cuda::plan::plan(g).unwrap().to_string();
        plan.split_whitespace().find(|w| w.contains("attention_")).unwrap_or("").to_string()
    };
    for dt in [DType::F16, DType::BF16] {
        let tol = if dt == DType::BF16 { (2e-2, 3e-2) } else { tolerance(dt) };
        for d in [64, 128] {
            // 8 x 16 x 3 blocks of 64 rows: four warps a block. 1 x 2 x 4: one warp a block.
            let wide = Case { b: 8, hq: 16, hk: 16, sq: 129, sk: 77, d, dv: d, three_d: false };
            let narrow = Case { b: 1, hq: 2, hk: 2, sq: 50, sk: 130, d, dv: d, three_d: true };
            for (c, warps) in [(&wide, "attention_mma_d"), (&narrow, "attention_mma_w1_d")] {
                let cases: Vec<(String, AttentionAttrs, Vec<Tensor>)> = vec![
                    ("plain".into(), attrs(), vec![]),
                    ("additive mask".into(), attrs(), vec![rand_tensor(&mut rng, &[c.b, 1, 1, c.sk], -3.0, 3.0, dt)]),
                    ("causal".into(), AttentionAttrs { is_causal: true, ..attrs() }, vec![]),
                    ("softcap".into(), AttentionAttrs { softcap: 2.0, ..attrs() }, vec![]),
                    (
                        "bool mask with an empty row".into(),
                        attrs(),
                        vec![Tensor::from_vec(
                            vec![c.sq, c.sk],
                            (0..c.sq * c.sk).map(|i| i / c.sk != 3 && i % 5 != 2).collect::<Vec<bool>>(),
                        )
                        .unwrap()],
                    ),
                ];
                for (what, a, extra) in cases {
                    let what = format!("tensor cores {what} d{d} sq{} sk{} {dt}", c.sq, c.sk);
                    let [q, k, v] = c.qkv(&mut rng, dt);
                    let mut data = vec![&q, &k, &v];
                    data.extend(&extra);
                    let (g, inputs) = one_node(Op::Attention(AttentionOp::Attention(c.attrs(a))), &data, &[], 1);
                    let name = kernel(&g);
                    assert!(name.contains(&format!("{warps}{d}_")), "{what}: planned {name}");
                    let Some(lib) = lib() else { continue };
                    plan_matches(lib, &what, &g, &inputs, tol.0, tol.1);
                }
            }
        }
    }
}

/// An f16 attention whose output a quantize (to i8) reads writes the i8 copy itself, the
/// quantize planned as no step of its own; the f16 output is left out where nothing else
/// reads it, and written where it is also a graph output.
#[test]
fn tensor_core_attention_writes_its_quantized_output() {
    use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
    use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode, FusedOp};
    use kiln_ir::{Graph, TypeInfo, Value, ValueInfo};
    let mut rng = Rng::new(41);
    let c = Case { b: 4, hq: 12, hk: 12, sq: 128, sk: 128, d: 64, dv: 64, three_d: true };
    let op = |op: ElementwiseOp, args: &[usize]| ExprNode::Op { op, args: args.to_vec() };
    // QuantizeLinear by 0.02 as fusion writes it.
    let quantize = Expr {
        nodes: vec![
            ExprNode::Input(0),
            op(ElementwiseOp::Cast { to: DType::F32, saturate: false }, &[0]),
            ExprNode::Scalar { value: 0.02, dtype: DType::F32 },
            op(ElementwiseOp::Binary(BinaryOp::Div), &[1, 2]),
            op(ElementwiseOp::Unary(UnaryOp::Round), &[3]),
            op(ElementwiseOp::Clip { min: Some(-128.0), max: Some(127.0) }, &[4]),
            op(ElementwiseOp::Cast { to: DType::I8, saturate: false }, &[5]),
        ],
    };
    for keep_f16 in [false, true] {
        let what = format!("attention then quantize (f16 output kept: {keep_f16})");
        let inputs = c.qkv(&mut rng, DType::F16).to_vec();
        let mut g = Graph::new("attention_q");
        let ins: Vec<Option<Value>> = ["q", "k", "v"]
            .iter()
            .zip(&inputs)
            .map(|(n, t)| Some(g.add_input(*n, TypeInfo::known(DType::F16, t.shape()))))
            .collect();
        let shape = c.shape(c.hq, c.sq, c.dv);
        let ty = |dt: DType| TypeInfo::known(dt, &shape);
        let att = Op::Attention(AttentionOp::Attention(c.attrs(attrs())));
        let a = g.add_node("attention", att, &ins, vec![ValueInfo::tensor("attention", ty(DType::F16))]);
        let a = Value { node: a, slot: 0 };
        let q = g.add_node(
            "quantize",
            Op::Fused(FusedOp::Elementwise(quantize.clone())),
            &[Some(a)],
            vec![ValueInfo::tensor("quantized", ty(DType::I8))],
        );
        g.add_output("quantized", Value { node: q, slot: 0 });
        if keep_f16 {
            g.add_output("attention", a);
        }
        let plan = kiln_cuda::plan::plan(&g).unwrap_or_else(|e| panic!("{what}: {e}"));
        let kernels: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                kiln_cuda::plan::StepKind::Kernel(k) => Some(k.kernel.clone()),
                _ => None,
            })
            .collect();
        assert!(
            kernels.len() == 1 && kernels[0].starts_with("attention_mma"),
            "{what}: one tensor-core kernel in\n{plan}"
        );
        let Some(lib) = lib() else { continue };
        let got = lib.run_plan(&plan, &inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
        let want = kiln_cpu::run_graph(&g, &inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
        // The f16 attention rounds a little differently from the CPU's; the quantized values
        // may then round the other way, by one step.
        check_close(&format!("{what}: i8"), &got[0], &want[0], 1.0, 0.0);
        if keep_f16 {
            check_close(&format!("{what}: f16"), &got[1], &want[1], 4e-3, 1e-2);
        }
    }
}
