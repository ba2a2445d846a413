//! Calibrators: from a histogram of magnitudes to a clipping threshold `amax`, whose INT8 scale
//! is `amax / 127` (symmetric, zero point 0).

use crate::Histogram;
use std::fmt;
use std::str::FromStr;

/// How a threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum CalibAlgo {
    /// The threshold whose quantized distribution is closest to the original in KL divergence,
    /// as TensorRT's entropy calibrator computes it.
    #[default]
    Entropy,
    /// The largest magnitude seen.
    MinMax,
    /// The given percentile of the magnitudes (99.99 by default).
    Percentile(f64),
    /// The threshold with the least mean squared quantization error.
    Mse,
}

impl fmt::Display for CalibAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibAlgo::Entropy => write!(f, "entropy"),
            CalibAlgo::MinMax => write!(f, "minmax"),
            CalibAlgo::Percentile(p) => write!(f, "percentile:{p}"),
            CalibAlgo::Mse => write!(f, "mse"),
        }
    }
}

impl FromStr for CalibAlgo {
    type Err = String;

    /// `entropy`, `minmax`, `mse`, `percentile` or `percentile:99.9`.
    fn from_str(s: &str) -> Result<CalibAlgo, String> {
        match s {
            "entropy" => Ok(CalibAlgo::Entropy),
            "minmax" => Ok(CalibAlgo::MinMax),
            "mse" => Ok(CalibAlgo::Mse),
            "percentile" => Ok(CalibAlgo::Percentile(99.99)),
            _ => match s.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 0.0 && p <= 100.0 => Ok(CalibAlgo::Percentile(p)),
                _ => Err(format!(
                    "unknown calibration algorithm '{s}': expected entropy, minmax, mse, percentile or percentile:P with 0 < P <= 100"
                )),
            },
        }
    }
}

/// The INT8 levels on each side of zero.
const LEVELS: usize = 128;

/// The clipping threshold for a histogram.
pub fn threshold(h: &Histogram, algo: CalibAlgo) -> f32 {
    if h.total() == 0 || h.max_abs() == 0.0 {
        return 0.0;
    }
    let t = match algo {
        CalibAlgo::MinMax => return h.max_abs(),
        CalibAlgo::Percentile(p) => percentile(h, p),
        CalibAlgo::Entropy => entropy(h),
        CalibAlgo::Mse => mse(h),
    };
    t.min(h.max_abs()).max(f32::MIN_POSITIVE)
}

/// The upper edge of the bin where the cumulative count reaches `p` percent.
fn percentile(h: &Histogram, p: f64) -> f32 {
    let want = (h.total() as f64 * p / 100.0).ceil() as u64;
    let mut seen = 0;
    for (i, &c) in h.counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return ((i + 1) as f64 * h.bin_width()) as f32;
        }
    }
    h.range
}

/// KL(p || q) over bins where p is positive; `q` must be positive wherever `p` is.
fn kl(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    let mut d = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        if a > 0.0 {
            let (a, b) = (a / sp, b / sq);
            if b <= 0.0 {
                return f64::INFINITY;
            }
            d += a * (a / b).ln();
        }
    }
    d
}

/// TensorRT's entropy calibration: for each candidate threshold `i` bins wide (from 128 bins up),
/// `p` is the histogram up to `i` with everything beyond folded into its last bin, and `q` is
/// `p`'s first `i` bins merged into 128 levels and spread back evenly over the nonzero bins of
/// each level. The threshold minimizing KL(p || q) wins, at the middle of its last bin.
fn entropy(h: &Histogram) -> f32 {
    let n = h.counts.len();
    if n <= LEVELS {
        return h.max_abs();
    }
    let counts: Vec<f64> = h.counts.iter().map(|&c| c as f64).collect();
    let last_nonzero = counts.iter().rposition(|&c| c > 0.0).unwrap_or(n - 1);
    let mut best = (f64::INFINITY, n);
    let mut tail: f64 = counts[LEVELS..].iter().sum();
    for i in LEVELS..=n {
        if i > last_nonzero + 1 {
            break;
        }
        let mut p = counts[..i].to_vec();
        // Outliers clip to the threshold: they land in its last bin.
        p[i - 1] += tail;
        if i < n {
            tail -= counts[i];
        }
        let mut q = vec![0.0; i];
        let per = i as f64 / LEVELS as f64;
        for level in 0..LEVELS {
            let start = (level as f64 * per).floor() as usize;
            let end = (((level + 1) as f64 * per).floor() as usize).max(start + 1).min(i);
            let sum: f64 = counts[start..end].iter().sum();
            let nonzero = counts[start..end].iter().filter(|&&c| c > 0.0).count();
            if nonzero > 0 {
                for j in start..end {
                    if counts[j] > 0.0 {
                        q[j] = sum / nonzero as f64;
                    }
                }
            }
        }
        // A clipped outlier mass sits in p's last bin where q may have none: give q its level
        // average there so the divergence stays finite, as TensorRT's smoothing does.
        if p[i - 1] > 0.0 && q[i - 1] == 0.0 {
            q[i - 1] = 1e-4 * p[i - 1].max(1.0);
        }
        let d = kl(&p, &q);
        if d < best.0 {
            best = (d, i);
        }
    }
    ((best.1 as f64 - 0.5) * h.bin_width()) as f32
}

/// The threshold with the least expected squared error of quantize-dequantize, from the bin
/// centres: values under the threshold round to within half a step (error step²/12 each),
/// values over it clip.
fn mse(h: &Histogram) -> f32 {
    let w = h.bin_width();
    let n = h.counts.len();
    let mut best = (f64::INFINITY, h.max_abs() as f64);
    // Candidates: the upper edge of every 8th bin, and the largest magnitude.
    let mut candidates: Vec<f64> = (1..=n).step_by(8).map(|i| i as f64 * w).collect();
    candidates.push(h.max_abs() as f64);
    for t in candidates {
        let step = t / (LEVELS - 1) as f64;
        let mut err = 0.0;
        for (i, &c) in h.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let x = (i as f64 + 0.5) * w;
            err += c as f64 * if x > t { (x - t).powi(2) } else { step * step / 12.0 };
        }
        if err < best.0 {
            best = (err, t);
        }
    }
    best.1 as f32
}
