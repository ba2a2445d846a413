//! The calibration cache: one INT8 scale per tensor in a plain text file that a person can
//! read and edit, and that `--calib-cache` reuses without any data.
//!
//! ```text
//! # kiln calibration cache v1
//! # algo: entropy
//! # kiln: 0.1.0
//! 0.0123<TAB>conv1_out
//! ```
//! Each line is the scale, a tab, and the tensor name (the rest of the line). Scales are
//! written in the shortest form that reads back to the same f32, so a cache round-trips
//! exactly.

use crate::{CalibAlgo, QuantError};
use std::collections::BTreeMap;
use std::fmt::Write;

/// The first line of every cache file.
const MAGIC: &str = "# kiln calibration cache v1";

/// Scales by tensor name, with how they were made.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibCache {
    /// The algorithm that chose the thresholds.
    pub algo: CalibAlgo,
    /// The Kiln version that wrote the cache.
    pub kiln_version: String,
    /// INT8 scale (`amax / 127`) per tensor.
    pub scales: BTreeMap<String, f32>,
}

impl CalibCache {
    /// The file's text.
    pub fn to_text(&self) -> Result<String, QuantError> {
        let mut s = String::new();
        let _ = writeln!(s, "{MAGIC}");
        let _ = writeln!(s, "# algo: {}", self.algo);
        let _ = writeln!(s, "# kiln: {}", self.kiln_version);
        for (name, scale) in &self.scales {
            if name.contains('\n') || name.contains('\r') {
                return Err(QuantError::Cache(format!("tensor name {name:?} has a line break and cannot be cached")));
            }
            let _ = writeln!(s, "{scale}\t{name}");
        }
        Ok(s)
    }

    /// Parses a cache file; errors name the line.
    pub fn parse(text: &str) -> Result<CalibCache, QuantError> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l.trim_end() == MAGIC => {}
            _ => {
                return Err(QuantError::Cache(format!(
                    "not a kiln calibration cache: the first line must be '{MAGIC}'"
                )))
            }
        }
        let mut algo = None;
        let mut version = String::new();
        let mut scales = BTreeMap::new();
        for (i, line) in lines {
            let n = i + 1;
            if let Some(rest) = line.strip_prefix("# algo:") {
                algo = Some(rest.trim().parse::<CalibAlgo>().map_err(|e| QuantError::Cache(format!("line {n}: {e}")))?);
                continue;
            }
            if let Some(rest) = line.strip_prefix("# kiln:") {
                version = rest.trim().to_string();
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (scale, name) = line
                .split_once('\t')
                .ok_or_else(|| QuantError::Cache(format!("line {n}: expected 'SCALE<tab>NAME', found {line:?}")))?;
            let scale: f32 =
                scale.trim().parse().map_err(|_| QuantError::Cache(format!("line {n}: '{scale}' is not a number")))?;
            if !scale.is_finite() || scale <= 0.0 {
                return Err(QuantError::Cache(format!(
                    "line {n}: the scale of '{name}' must be positive and finite, found {scale}"
                )));
            }
            if scales.insert(name.to_string(), scale).is_some() {
                return Err(QuantError::Cache(format!("line {n}: '{name}' appears twice")));
            }
        }
        let algo = algo.ok_or_else(|| QuantError::Cache("the cache has no '# algo:' line".into()))?;
        Ok(CalibCache { algo, kiln_version: version, scales })
    }
}
