//! Calibrators on distributions whose best threshold is known, the quantization round trip,
//! and the cache round trip.

use kiln_quant::{quantize_weights, threshold, CalibAlgo, CalibCache, Histogram};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A seeded generator (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn hist(xs: &[f32]) -> Histogram {
    let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
    let mut h = Histogram::new(2048, amax);
    h.add(xs);
    h
}

/// Uniform values in [-1, 1] plus a few outliers at ±100.
fn uniform_with_outliers() -> Vec<f32> {
    let mut r = Rng(1);
    let mut xs: Vec<f32> = (0..200_000).map(|_| (r.next() * 2.0 - 1.0) as f32).collect();
    xs.extend([100.0, -100.0, 99.0]);
    xs
}

#[test]
fn minmax_takes_the_largest_magnitude() {
    assert_eq!(threshold(&hist(&uniform_with_outliers()), CalibAlgo::MinMax), 100.0);
}

#[test]
fn percentile_ignores_the_rare_outliers() {
    let t = threshold(&hist(&uniform_with_outliers()), CalibAlgo::Percentile(99.99));
    // 99.99% of the mass is within |x| <= 1; bins are 100/2048 wide.
    assert!((0.95..=1.0 + 100.0 / 2048.0 + 1e-6).contains(&t), "{t}");
}

#[test]
fn entropy_clips_the_outliers_of_a_bounded_distribution() {
    let mut xs = uniform_with_outliers();
    xs.retain(|x| x.abs() <= 1.0);
    xs.extend([10.0, -10.0, 9.5]);
    let t = threshold(&hist(&xs), CalibAlgo::Entropy);
    // The bulk ends at 1.0 (bin 205 of 2048 over [0, 10]); the entropy threshold sits at or
    // just past it, nowhere near 10.
    assert!((0.9..=1.6).contains(&t), "{t}");
    // With the outliers at 100 the bulk fits in fewer than 128 bins, the smallest threshold
    // the method tries (128 bins of 100/2048, as in TensorRT): it takes that one.
    let t = threshold(&hist(&uniform_with_outliers()), CalibAlgo::Entropy);
    assert!((t - 127.5 * 100.0 / 2048.0).abs() < 1e-3, "{t}");
}

#[test]
fn entropy_on_a_gaussian_keeps_a_few_standard_deviations() {
    let mut r = Rng(2);
    let mut xs: Vec<f32> = (0..200_000).map(|_| r.normal() as f32).collect();
    xs.push(40.0);
    let t = threshold(&hist(&xs), CalibAlgo::Entropy);
    assert!((2.0..=8.0).contains(&t), "{t}");
}

/// The naive reference for MSE: the exact expected error of every bin edge, best one wins.
fn mse_reference(h: &Histogram) -> f64 {
    let w = h.bin_width();
    let mut best = (f64::INFINITY, 0.0);
    for i in 1..=h.counts.len() {
        let t = i as f64 * w;
        let step = t / 127.0;
        let err: f64 = h
            .counts
            .iter()
            .enumerate()
            .map(|(j, &c)| {
                let x = (j as f64 + 0.5) * w;
                c as f64 * if x > t { (x - t).powi(2) } else { step * step / 12.0 }
            })
            .sum();
        if err < best.0 {
            best = (err, t);
        }
    }
    best.1
}

#[test]
fn mse_finds_the_reference_optimum() {
    for xs in [uniform_with_outliers(), {
        let mut r = Rng(3);
        (0..100_000).map(|_| (r.normal() * 0.5) as f32).collect::<Vec<_>>()
    }] {
        let h = hist(&xs);
        let got = threshold(&h, CalibAlgo::Mse) as f64;
        let want = mse_reference(&h);
        // Candidates are every 8th bin edge: within 8 bins of the exact optimum.
        assert!((got - want).abs() <= 8.0 * h.bin_width() + 1e-6, "mse {got} vs reference {want}");
    }
}

#[test]
fn calibration_algorithms_parse_and_print() {
    for s in ["entropy", "minmax", "mse", "percentile:99.9"] {
        assert_eq!(s.parse::<CalibAlgo>().unwrap().to_string(), s);
    }
    assert_eq!("percentile".parse::<CalibAlgo>().unwrap(), CalibAlgo::Percentile(99.99));
    assert!("percentile:150".parse::<CalibAlgo>().unwrap_err().contains("0 < P <= 100"));
    assert!("kl".parse::<CalibAlgo>().is_err());
}

proptest! {
    /// Symmetric per-channel weights dequantize to within half a step of the original.
    #[test]
    fn weight_quantization_error_is_within_half_a_step(
        channels in 1usize..6,
        per in 1usize..40,
        seed in any::<u64>(),
        spread in 0.001f64..100.0,
    ) {
        let mut r = Rng(seed);
        let v: Vec<f32> = (0..channels * per).map(|_| ((r.next() * 2.0 - 1.0) * spread) as f32).collect();
        let w = kiln_ir::Tensor::from_vec(vec![channels, per], v.clone()).unwrap();
        let (q, s) = quantize_weights(&w, 0).unwrap();
        let q = q.as_slice::<i8>().unwrap().to_vec();
        let s = s.as_slice::<f32>().unwrap().to_vec();
        for (i, x) in v.iter().enumerate() {
            let c = i / per;
            let back = q[i] as f64 * s[c] as f64;
            prop_assert!((back - *x as f64).abs() <= s[c] as f64 / 2.0 * (1.0 + 1e-6), "{x} -> {back} (scale {})", s[c]);
        }
    }

    /// A cache written and read back is the same cache, scale for scale, bit for bit.
    #[test]
    fn cache_round_trips_exactly(
        entries in prop::collection::btree_map("[a-zA-Z0-9_./: -]{1,24}", 1e-12f32..1e6, 0..20),
        algo in prop_oneof![Just(CalibAlgo::Entropy), Just(CalibAlgo::MinMax), Just(CalibAlgo::Mse), (50.0f64..100.0).prop_map(CalibAlgo::Percentile)],
    ) {
        let c = CalibCache { algo, kiln_version: "0.1.0".into(), scales: entries };
        let back = CalibCache::parse(&c.to_text().unwrap()).unwrap();
        prop_assert_eq!(&back.scales.len(), &c.scales.len());
        for (k, v) in &c.scales {
            prop_assert_eq!(back.scales[k].to_bits(), v.to_bits());
        }
        prop_assert_eq!(back.algo.to_string(), c.algo.to_string());
    }
}

#[test]
fn a_hand_edited_cache_is_read_and_a_broken_one_named() {
    let text = "# kiln calibration cache v1\n# algo: minmax\n# kiln: 0.1.0\n# a comment\n0.5\tconv1 out\n0.25\tx\n";
    let c = CalibCache::parse(text).unwrap();
    let want: BTreeMap<String, f32> = [("conv1 out".to_string(), 0.5), ("x".to_string(), 0.25)].into_iter().collect();
    assert_eq!(c.scales, want);
    let bad = |t: &str| CalibCache::parse(t).unwrap_err().to_string();
    assert!(bad("hello\n").contains("not a kiln calibration cache"));
    assert!(bad("# kiln calibration cache v1\n# algo: minmax\n0.5 x\n").contains("line 3"));
    assert!(bad("# kiln calibration cache v1\n# algo: minmax\n-1\tx\n").contains("positive"));
    assert!(bad("# kiln calibration cache v1\n0.5\tx\n").contains("no '# algo:'"));
    assert!(bad("# kiln calibration cache v1\n# algo: minmax\n0.5\tx\n0.5\tx\n").contains("twice"));
}
