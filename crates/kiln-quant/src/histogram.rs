//! Histograms of activation magnitudes, the statistics calibration works from.

/// A histogram of `|x|` over `[0, range]` in equal bins, with the signed extremes seen.
///
/// Calibration runs the model twice over the data: the first pass finds each tensor's largest
/// magnitude (the range), the second fills the bins. Values beyond the range (none, with two
/// passes over the same data) count in the last bin.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Counts per bin; bin `i` holds `|x|` in `[i, i + 1) * range / bins`.
    pub counts: Vec<u64>,
    /// The upper end of the last bin.
    pub range: f32,
    /// The smallest value seen.
    pub min: f32,
    /// The largest value seen.
    pub max: f32,
}

impl Histogram {
    /// An empty histogram of `bins` bins over `[0, range]`.
    pub fn new(bins: usize, range: f32) -> Histogram {
        Histogram {
            counts: vec![0; bins.max(1)],
            range: range.max(f32::MIN_POSITIVE),
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f64 {
        self.range as f64 / self.counts.len() as f64
    }

    /// Adds values (NaN is skipped: it has no magnitude to calibrate).
    pub fn add(&mut self, xs: &[f32]) {
        let n = self.counts.len();
        let scale = n as f64 / self.range as f64;
        for &x in xs {
            if x.is_nan() {
                continue;
            }
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            let b = ((x.abs() as f64) * scale) as usize;
            self.counts[b.min(n - 1)] += 1;
        }
    }

    /// Total count.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The largest magnitude seen.
    pub fn max_abs(&self) -> f32 {
        if self.min > self.max {
            0.0
        } else {
            self.min.abs().max(self.max.abs())
        }
    }
}
