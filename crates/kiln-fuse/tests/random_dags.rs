//! Property: fusing a random DAG never changes what it computes.
//!
//! The strategy builds graphs of 20 to 40 nodes from a list of choices: pointwise ops,
//! broadcasts against per-channel and scalar constants and against other values, MatMul,
//! Conv (with bias and BatchNormalization), reductions, Softmax, Reshape and Transpose, over
//! random shapes and constants, with some intermediates exposed as outputs so that sharing
//! matters. The fused graph must agree with the original on the CPU reference to a relative
//! error of 1e-4 (f32).

mod common;

use common::{inputs_for, op, rel_error, Rng};
use kiln_fuse::{fuse, FuseOptions};
use kiln_ir::passes::{InferTypes, PassContext, PassManager};
use kiln_ir::{Graph, Tensor, TypeInfo, Value, ValueInfo};
use proptest::prelude::*;

/// A value of the graph being built, with its shape.
#[derive(Clone)]
struct Val {
    v: Value,
    shape: Vec<usize>,
}

struct Builder {
    g: Graph,
    rng: Rng,
    pool: Vec<Val>,
    n: usize,
}

impl Builder {
    fn node(&mut self, name: &str, attrs: &str, ins: &[Option<Value>], shape: Vec<usize>) -> Val {
        self.n += 1;
        let id = self.g.add_node(
            format!("{name}_{}", self.n),
            op(name, attrs),
            ins,
            vec![ValueInfo::named(format!("v{}", self.n))],
        );
        let v = Val { v: Value { node: id, slot: 0 }, shape };
        self.pool.push(v.clone());
        v
    }

    fn konst(&mut self, shape: &[usize], scale: f32, offset: f32) -> Value {
        self.n += 1;
        let t = self.rng.tensor(shape, scale);
        let t = Tensor::from_vec(shape.to_vec(), t.to_f64_vec().iter().map(|x| *x as f32 + offset).collect::<Vec<_>>())
            .unwrap();
        self.g.add_const(format!("c{}", self.n), t)
    }

    /// A recent value (recent ones more often, so chains form).
    fn pick(&mut self, r: u32) -> Val {
        let len = self.pool.len();
        let back = (r as usize % 4).min(len - 1);
        self.pool[len - 1 - back].clone()
    }

    fn step(&mut self, choice: u8, r: u32) {
        let a = self.pick(r);
        let s = a.shape.clone();
        match choice % 14 {
            0 => drop(self.node(["Relu", "Sigmoid", "Tanh", "Neg", "Abs"][(r % 5) as usize], "", &[Some(a.v)], s)),
            1 | 2 => {
                // Broadcast against a per-channel or scalar constant.
                let cshape = if s.len() >= 3 && r.is_multiple_of(2) {
                    let mut c = vec![1; s.len() - 1];
                    c[0] = s[1];
                    c
                } else {
                    vec![]
                };
                let c = self.konst(&cshape, 0.5, if r.is_multiple_of(3) { 1.0 } else { 0.0 });
                let name = ["Add", "Mul", "Sub"][(r / 7 % 3) as usize];
                self.node(name, "", &[Some(a.v), Some(c)], s);
            }
            3 => {
                // Two values of one shape meet (a residual).
                let other = self.pool.iter().rev().find(|v| v.shape == s && v.v != a.v).cloned();
                if let Some(b) = other {
                    self.node(["Add", "Mul", "Max"][(r % 3) as usize], "", &[Some(a.v), Some(b.v)], s);
                }
            }
            4 | 5 => {
                let k = *s.last().unwrap();
                let m = 1 + (r as usize % 7);
                let w = self.konst(&[k, m], 0.4, 0.0);
                let mut out = s.clone();
                *out.last_mut().unwrap() = m;
                self.node("MatMul", "", &[Some(a.v), Some(w)], out);
            }
            6 | 7 if s.len() == 4 => {
                let m = 1 + (r as usize % 5);
                let w = self.konst(&[m, s[1], 3, 3], 0.3, 0.0);
                let bias = (r.is_multiple_of(2)).then(|| self.konst(&[m], 0.3, 0.0));
                let out = vec![s[0], m, s[2], s[3]];
                let c = self.node("Conv", "1", &[Some(a.v), Some(w), bias], out.clone());
                if r.is_multiple_of(3) {
                    let (sc, b, mean) =
                        (self.konst(&[m], 0.2, 1.0), self.konst(&[m], 0.3, 0.0), self.konst(&[m], 0.3, 0.0));
                    let var = self.konst(&[m], 0.2, 1.0);
                    self.node("BatchNormalization", "", &[Some(c.v), Some(sc), Some(b), Some(mean), Some(var)], out);
                }
            }
            8 => {
                let mut out = s.clone();
                *out.last_mut().unwrap() = 1;
                self.node(["ReduceMean", "ReduceSum", "ReduceMax"][(r % 3) as usize], "-1", &[Some(a.v)], out);
            }
            9 => drop(self.node("Softmax", "-1", &[Some(a.v)], s)),
            10 if s.len() >= 2 => {
                let mut perm: Vec<i64> = (0..s.len() as i64).collect();
                let l = perm.len();
                perm.swap(l - 1, l - 2);
                let out: Vec<usize> = perm.iter().map(|&p| s[p as usize]).collect();
                let attrs = perm.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
                self.node("Transpose", &attrs, &[Some(a.v)], out);
            }
            11 if s.len() == 4 => {
                // Flatten the spatial dims and restore them, a Reshape pair exporters write.
                let flat = vec![s[0], s[1], s[2] * s[3]];
                let shape = self.g.add_const(
                    format!("s{}", self.n),
                    Tensor::from_vec(vec![3], flat.iter().map(|&d| d as i64).collect::<Vec<i64>>()).unwrap(),
                );
                let f = self.node("Reshape", "", &[Some(a.v), Some(shape)], flat);
                if r.is_multiple_of(2) {
                    let back = self.g.add_const(
                        format!("b{}", self.n),
                        Tensor::from_vec(vec![4], s.iter().map(|&d| d as i64).collect::<Vec<i64>>()).unwrap(),
                    );
                    self.node("Reshape", "", &[Some(f.v), Some(back)], s);
                }
            }
            12 => {
                let c = self.konst(&[], 0.0, 1.0);
                self.node("Mul", "", &[Some(a.v), Some(c)], s);
            }
            _ => {
                // Another chain from an older value keeps the graph a DAG, not a line.
                let old = self.pool[r as usize % self.pool.len()].clone();
                self.node("Sigmoid", "", &[Some(old.v)], old.shape);
            }
        }
    }
}

fn build(dims: [usize; 4], steps: &[(u8, u32)], outputs: &[u32]) -> Graph {
    let mut b =
        Builder { g: Graph::new("random"), rng: Rng::new(dims.iter().sum::<usize>() as u64), pool: vec![], n: 0 };
    let x = b.g.add_input("x", TypeInfo::known(kiln_ir::DType::F32, &dims));
    b.pool.push(Val { v: x, shape: dims.to_vec() });
    for &(c, r) in steps {
        b.step(c, r);
    }
    let last = b.pool.last().unwrap().v;
    b.g.add_output("out", last);
    for (i, &o) in outputs.iter().enumerate() {
        let v = b.pool[o as usize % b.pool.len()].v;
        if v != last && !b.g.outputs.iter().any(|x| x.value == v) && b.g.node(v.node).op.name() != "Input" {
            b.g.add_output(format!("extra{i}"), v);
        }
    }
    PassManager::new(vec![Box::new(InferTypes)]).always_verify(true).run(&mut b.g, &PassContext::default()).unwrap();
    b.g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn fusion_preserves_values(
        dims in (1usize..3, 1usize..6, 1usize..6, 1usize..6),
        steps in prop::collection::vec((any::<u8>(), any::<u32>()), 20..40),
        outputs in prop::collection::vec(any::<u32>(), 0..3),
    ) {
        let g = build([dims.0, dims.1, dims.2, dims.3], &steps, &outputs);
        let compute = g.node_ids().filter(|&id| !matches!(g.node(id).op.name(), "Input" | "Const")).count();
        prop_assume!(compute >= 20);
        let (fused, report) = fuse(&g, &FuseOptions::default()).unwrap();
        let ins = inputs_for(&g, 3);
        let want = kiln_cpu::run_graph(&g, &ins).unwrap();
        let got = kiln_cpu::run_graph(&fused, &ins).unwrap();
        let err = rel_error(&want, &got);
        prop_assert!(err < 1e-4, "relative error {} after fusion\n{}\n{}", err, report, fused.dump());
    }
}
