//! Graph passes and the pass manager that runs them, verifying after each one.

mod const_fold;
mod dce;
mod fold_shapes;
mod fp16;
mod infer_types;
mod remove_noops;

pub use const_fold::ConstFold;
pub use dce::DeadCodeElimination;
pub use fold_shapes::FoldShapes;
pub use fp16::{
    param_slot, saturating_f16, split_weights, EarlyPolicy, Fp16Report, KeepReason, KeptNode, ToFp16, F16_MAX,
};
pub use infer_types::InferTypes;
pub use remove_noops::RemoveNoops;

use crate::{Graph, IrError, Op, Tensor};

/// Evaluates one op on concrete inputs. Implemented by an executor (the CPU reference), so
/// that this crate can fold constants without depending on one.
pub trait Evaluator {
    /// Computes the op's outputs; `None` for absent optional inputs.
    fn eval(&self, op: &Op, inputs: &[Option<&Tensor>], num_outputs: usize) -> Result<Vec<Tensor>, String>;
}

/// What passes may use besides the graph.
#[derive(Clone, Copy, Default)]
pub struct PassContext<'a> {
    /// Evaluates ops for constant folding; without one, folding does nothing.
    pub evaluator: Option<&'a dyn Evaluator>,
    /// The largest constant, in bytes, that folding may create.
    pub max_folded_bytes: usize,
}

/// A transformation of a graph.
pub trait Pass {
    /// The pass's name, used in reports and errors.
    fn name(&self) -> &'static str;
    /// Transforms the graph; returns whether anything changed.
    fn run(&self, graph: &mut Graph, cx: &PassContext<'_>) -> Result<bool, IrError>;
}

/// Runs a list of passes again and again until none changes the graph (or a round limit is
/// reached), verifying after each one in debug builds. Shape folding, constant folding and
/// type inference feed each other this way.
pub struct Repeat {
    name: &'static str,
    max_rounds: usize,
    passes: Vec<Box<dyn Pass>>,
}

impl Repeat {
    /// A named repetition of `passes`, at most `max_rounds` times.
    pub fn new(name: &'static str, max_rounds: usize, passes: Vec<Box<dyn Pass>>) -> Repeat {
        Repeat { name, max_rounds, passes }
    }
}

impl Pass for Repeat {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, graph: &mut Graph, cx: &PassContext<'_>) -> Result<bool, IrError> {
        let mut any = false;
        for _ in 0..self.max_rounds {
            let mut changed = false;
            for pass in &self.passes {
                let wrap = |e: IrError| IrError::Pass { pass: pass.name(), source: Box::new(e) };
                changed |= pass.run(graph, cx).map_err(wrap)?;
                if cfg!(debug_assertions) {
                    graph.verify().map_err(wrap)?;
                }
            }
            any |= changed;
            if !changed {
                break;
            }
        }
        Ok(any)
    }
}

/// What one pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassReport {
    /// The pass's name.
    pub pass: &'static str,
    /// Whether it changed the graph.
    pub changed: bool,
    /// Live nodes after it ran.
    pub nodes_after: usize,
}

/// Runs an ordered list of passes, verifying the graph after each one.
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    stop_after: Option<usize>,
    verify: bool,
}

impl PassManager {
    /// The default pipeline, in order. This list is the registry of passes.
    pub fn default_pipeline() -> PassManager {
        PassManager::new(vec![
            Box::new(InferTypes),
            Box::new(RemoveNoops),
            // Each round can only fold the shapes the previous one made known, one layer
            // of a deep model at a time: the limit is a backstop, not a budget.
            Box::new(Repeat::new(
                "fold-constants",
                1000,
                vec![Box::new(FoldShapes), Box::new(ConstFold), Box::new(InferTypes)],
            )),
            Box::new(DeadCodeElimination),
            Box::new(InferTypes),
        ])
    }

    /// A pipeline of the given passes.
    pub fn new(passes: Vec<Box<dyn Pass>>) -> PassManager {
        PassManager { passes, stop_after: None, verify: cfg!(debug_assertions) }
    }

    /// Stops after the first `n` passes, to bisect a wrong result to one pass.
    pub fn stop_after(mut self, n: usize) -> PassManager {
        self.stop_after = Some(n);
        self
    }

    /// Verifies after every pass even in release builds (on by default in debug builds).
    pub fn always_verify(mut self, on: bool) -> PassManager {
        self.verify = on;
        self
    }

    /// The names of the passes, in order.
    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs the pipeline.
    pub fn run(&self, graph: &mut Graph, cx: &PassContext<'_>) -> Result<Vec<PassReport>, IrError> {
        let n = self.stop_after.unwrap_or(self.passes.len()).min(self.passes.len());
        let mut reports = Vec::with_capacity(n);
        for pass in &self.passes[..n] {
            let wrap = |e: IrError| IrError::Pass { pass: pass.name(), source: Box::new(e) };
            let changed = pass.run(graph, cx).map_err(wrap)?;
            if self.verify {
                graph.verify().map_err(wrap)?;
            }
            reports.push(PassReport { pass: pass.name(), changed, nodes_after: graph.node_count() });
        }
        Ok(reports)
    }
}
