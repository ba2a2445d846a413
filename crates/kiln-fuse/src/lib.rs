//! Layer fusion by equality saturation.
//!
//! [`fuse`] puts an IR graph into an e-graph ([`lang`], [`analysis`]), lets the rule families
//! ([`rules`]) add every equivalent form they know (fused epilogues, elementwise groups,
//! normalizations, attention) within node, iteration and time limits, and extracts the graph
//! whose estimated GPU time ([`cost`]) is least ([`extract`]). The [`FuseReport`] says what
//! happened: op counts before and after, how often each rule fired, the e-graph's size, why
//! saturation stopped and how long it took.
//!
//! This is the only crate that knows egg.

#![warn(missing_docs)]

pub mod analysis;
pub mod convert;
pub mod cost;
mod explain;
pub mod extract;
pub mod lang;
pub mod rules;

pub use cost::GpuProfile;
pub use explain::{to_dot, FuseReport};

use analysis::Rewrite;
use kiln_ir::passes::{DeadCodeElimination, InferTypes, PassContext, PassManager};
use kiln_ir::Graph;
use std::time::{Duration, Instant};

/// Why fusion failed. The caller keeps the unfused graph, which is always correct.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The graph could not be put into or taken out of the e-graph.
    #[error("fusion: {0}")]
    Graph(String),
    /// The fused graph failed verification: a bug in a rule.
    #[error("fusion produced an invalid graph: {0}")]
    Invalid(#[from] kiln_ir::IrError),
}

/// Limits and targets of a fusion run.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// The GPU the cost model estimates for.
    pub profile: GpuProfile,
    /// The most rule-application rounds per phase.
    pub iter_limit: usize,
    /// The most e-nodes per phase; saturation stops beyond it.
    pub node_limit: usize,
    /// The most time saturation may take, over all phases.
    pub time_limit: Duration,
    /// Rule families to leave out, by name (see [`rules::families`]).
    pub disabled: Vec<String>,
}

impl Default for FuseOptions {
    fn default() -> FuseOptions {
        FuseOptions {
            profile: GpuProfile::H100,
            iter_limit: 16,
            node_limit: 200_000,
            time_limit: Duration::from_secs(10),
            disabled: vec![],
        }
    }
}

/// The phases of a run, in order, each with its rule families. Each phase saturates its
/// families and extracts the cheapest graph, which the next phase starts from. Clean-up runs
/// first and alone: its rules (`x * 1 = x`) put cycles into the e-graph,
/// through which the fusion rules would build ever larger copies of the same expression.
pub fn phases() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("simplify", vec!["cleanup"]),
        ("fuse", vec!["conv_bn", "qdq", "pool", "elementwise", "gemm_epilogue", "norm", "attention"]),
    ]
}

/// The rules of a phase's enabled families.
fn phase_rules(families: &[&str], opts: &FuseOptions) -> Vec<Rewrite> {
    rules::families()
        .into_iter()
        .filter(|(name, _)| families.contains(name) && !opts.disabled.iter().any(|d| d == name))
        .flat_map(|(_, f)| f())
        .collect()
}

/// What one phase did.
struct Phase {
    iterations: usize,
    nodes: usize,
    classes: usize,
    stop: String,
    fired: std::collections::HashMap<String, usize>,
    saturate: Duration,
}

/// Saturates `graph` with `rules` and extracts the cheapest equivalent graph.
fn run_phase(
    graph: &Graph,
    rules: &[Rewrite],
    opts: &FuseOptions,
    time_left: Duration,
) -> Result<(Graph, Phase), FuseError> {
    let start = Instant::now();
    let mut lowered = convert::to_egraph(graph)?;
    let runner = egg::Runner::default()
        .with_egraph(std::mem::take(&mut lowered.egraph))
        .with_iter_limit(opts.iter_limit)
        .with_node_limit(opts.node_limit)
        .with_time_limit(time_left)
        .with_scheduler(egg::SimpleScheduler)
        .run(rules);
    let saturate = start.elapsed();
    let egraph = runner.egraph;
    let profile = opts.profile;
    let node_cost = |eg: &analysis::EGraph, class: egg::Id, n: &lang::KNode| -> f64 {
        match eg.analysis.op_of(n) {
            Some((op, _)) => {
                let ins: Vec<_> = n.args.iter().map(|&a| eg[a].data.ty()).collect();
                cost::node_cost(&profile, &op, &ins, &eg[class].data.tys)
            }
            None => 0.0,
        }
    };
    let roots: Vec<egg::Id> = lowered.outputs.iter().map(|&r| egraph.find(r)).collect();
    let (mut ex, best) = extract::extract(&egraph, &roots, &node_cost)
        .ok_or_else(|| FuseError::Graph("extraction found no finite-cost graph for the outputs".into()))?;
    extract::improve(&egraph, &roots, &mut ex, &best, &node_cost);
    let mut out = convert::to_graph(graph, &lowered, &egraph, &ex.choice)?;
    // Extraction leaves types as the analysis knew them; inference fills in the rest, and
    // dead-code elimination drops constants no chosen node reads.
    PassManager::new(vec![Box::new(InferTypes), Box::new(DeadCodeElimination)])
        .always_verify(true)
        .run(&mut out, &PassContext::default())?;
    let stop = match &runner.stop_reason {
        Some(egg::StopReason::Saturated) => "saturated".into(),
        Some(egg::StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(egg::StopReason::NodeLimit(n)) => format!("node limit ({n})"),
        Some(egg::StopReason::TimeLimit(t)) => format!("time limit ({t:.1} s)"),
        Some(egg::StopReason::Other(s)) => s.clone(),
        None => "not run".into(),
    };
    let phase = Phase {
        iterations: runner.iterations.len(),
        nodes: egraph.total_number_of_nodes(),
        classes: egraph.number_of_classes(),
        stop,
        fired: {
            // Applications that changed the e-graph, per rule, as egg counts them.
            let mut f = std::collections::HashMap::new();
            for it in &runner.iterations {
                for (rule, n) in &it.applied {
                    *f.entry(rule.to_string()).or_default() += n;
                }
            }
            f
        },
        saturate,
    };
    Ok((out, phase))
}

/// Fuses a graph: the cheapest equivalent graph found, and the report.
///
/// The input should be optimized by the IR pipeline first (types inferred, shapes and
/// constants folded): rules check shapes and read constants, so what is unknown is not fused.
pub fn fuse(graph: &Graph, opts: &FuseOptions) -> Result<(Graph, FuseReport), FuseError> {
    let start = Instant::now();
    let mut current = graph.clone();
    let mut fired: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut iterations, mut nodes, mut classes, mut stops) = (0, 0, 0, vec![]);
    let mut saturate = Duration::ZERO;
    for (name, families) in phases() {
        let rules = phase_rules(&families, opts);
        if rules.is_empty() {
            continue;
        }
        let left = opts.time_limit.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
        let (next, p) = run_phase(&current, &rules, opts, left)?;
        current = next;
        for (k, v) in p.fired {
            *fired.entry(k).or_default() += v;
        }
        iterations += p.iterations;
        nodes = nodes.max(p.nodes);
        classes = classes.max(p.classes);
        stops.push(format!("{name}: {}", p.stop));
        saturate += p.saturate;
    }
    let profile = opts.profile;
    let report = FuseReport {
        before: graph.op_counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        after: current.op_counts().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        launching_before: launching_nodes(graph),
        launching_after: launching_nodes(&current),
        estimate_before_us: estimate(graph, &profile) * 1e6,
        estimate_after_us: estimate(&current, &profile) * 1e6,
        rules_fired: fired.into_iter().collect(),
        iterations,
        egraph_nodes: nodes,
        egraph_classes: classes,
        stop_reason: stops.join("; "),
        saturate_ms: saturate.as_secs_f64() * 1e3,
        total_ms: start.elapsed().as_secs_f64() * 1e3,
        profile: profile.name.to_string(),
    };
    Ok((current, report))
}

/// How many nodes of the graph launch GPU work: everything but inputs, constants and views.
pub fn launching_nodes(g: &Graph) -> usize {
    g.node_ids().filter(|&id| !cost::is_free(&g.node(id).op)).count()
}

/// The cost model's estimate for a whole graph, s.
pub fn estimate(g: &Graph, profile: &GpuProfile) -> f64 {
    g.node_ids()
        .map(|id| {
            let n = g.node(id);
            let ins: Vec<_> = g
                .inputs_of(id)
                .into_iter()
                .map(|v| v.map(|v| g.value_info(v).ty.clone()).unwrap_or_default())
                .collect();
            let outs: Vec<_> = n.outputs.iter().map(|o| o.ty.clone()).collect();
            cost::node_cost(profile, &n.op, &ins, &outs)
        })
        .sum()
}
