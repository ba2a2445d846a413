//! The op registry: which ONNX op types Kiln imports, and how.
//!
//! Each family file has a `register` function with one `reg.insert` line per op, and
//! [`registry`] calls every family in order. Nothing registers itself elsewhere.

mod attention;
mod control;
mod elementwise;
mod layout;
mod linalg;
mod loss;
mod norm;
mod pool;
mod quant;
mod reduce;
mod rnn;
mod sequence;
mod signal;
mod spatial;

use crate::{ImportError, NodeCtx};
use kiln_ir::Op;
use std::collections::HashMap;

/// Turns one ONNX node into one IR op.
pub type ImportFn = fn(&NodeCtx<'_>) -> Result<Op, ImportError>;

/// The ONNX domain Kiln's ops come from unless a family says otherwise.
pub const DEFAULT_DOMAIN: &str = "";

/// Op importers by (domain, op type).
#[derive(Default)]
pub struct Registry {
    map: HashMap<(&'static str, &'static str), ImportFn>,
}

impl Registry {
    /// Registers an op of the default ONNX domain.
    pub fn insert(&mut self, op: &'static str, f: ImportFn) {
        self.map.insert((DEFAULT_DOMAIN, op), f);
    }

    /// Registers an op of another domain (such as `com.microsoft`).
    pub fn insert_domain(&mut self, domain: &'static str, op: &'static str, f: ImportFn) {
        self.map.insert((domain, op), f);
    }

    /// The importer for an op, if any. The `ai.onnx` domain is the default domain.
    pub fn get(&self, domain: &str, op: &str) -> Option<ImportFn> {
        let domain = if domain == "ai.onnx" { DEFAULT_DOMAIN } else { domain };
        self.map.get(&(domain, op)).copied()
    }

    /// Every registered (domain, op), sorted.
    pub fn ops(&self) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = self.map.keys().copied().collect();
        v.sort();
        v
    }
}

/// The registry of every op Kiln imports.
pub fn registry() -> Registry {
    let mut reg = Registry::default();
    elementwise::register(&mut reg);
    quant::register(&mut reg);
    linalg::register(&mut reg);
    pool::register(&mut reg);
    norm::register(&mut reg);
    reduce::register(&mut reg);
    layout::register(&mut reg);
    rnn::register(&mut reg);
    spatial::register(&mut reg);
    sequence::register(&mut reg);
    signal::register(&mut reg);
    loss::register(&mut reg);
    attention::register(&mut reg);
    control::register(&mut reg);
    reg
}
