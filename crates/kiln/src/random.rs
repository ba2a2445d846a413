//! Seeded random tensors for inputs the user did not give (SplitMix64: small, fast, and the
//! same numbers on every platform).

use kiln_ir::{DType, Tensor};

/// A SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A tensor of the given type and shape: floats uniform in [-1, 1), integers uniform in
/// [0, 4) (small, so that index-like inputs stay in range), booleans fair coin flips.
pub fn random_tensor(dtype: DType, shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| match dtype {
            d if d.is_float() => rng.uniform() * 2.0 - 1.0,
            DType::Bool => (rng.next_u64() & 1) as f64,
            _ => (rng.next_u64() % 4) as f64,
        })
        .collect();
    Tensor::from_vec(shape.to_vec(), v).expect("length matches the shape").cast(dtype)
}

/// The inputs of `graph` in input order: the tensor given for an input's name (taken out of
/// `given`), else seeded random values of its declared type and fixed shape. An input with no
/// element type or no fixed shape is an error naming it and the flag that supplies one.
pub fn graph_inputs(
    graph: &kiln_ir::Graph,
    given: &mut std::collections::HashMap<String, Tensor>,
    seed: u64,
) -> Result<Vec<Tensor>, String> {
    let mut rng = Rng::new(seed);
    let mut inputs = vec![];
    for &id in &graph.inputs {
        let info = &graph.node(id).outputs[0];
        let t = match given.remove(&info.name) {
            Some(t) => t,
            None => {
                let name = &info.name;
                let dtype = info
                    .ty
                    .dtype
                    .ok_or_else(|| format!("input '{name}' has no declared element type; give it with --input"))?;
                let shape = info.ty.concrete_shape().ok_or_else(|| {
                    format!("input '{name}' has no fixed shape ({}); give one with --shapes {name}=DIMS", info.ty)
                })?;
                random_tensor(dtype, &shape, &mut rng)
            }
        };
        inputs.push(t);
    }
    Ok(inputs)
}
