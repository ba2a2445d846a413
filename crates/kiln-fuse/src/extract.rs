//! Extraction: choose one e-node per needed e-class so that the whole graph's estimated time is
//! least.
//!
//! A tree-cost extractor (egg's `Extractor`) counts a shared value once per use, which would
//! make recomputing a convolution in two epilogues look as cheap as computing it once. This one
//! is DAG-aware and greedy, after extraction-gym's `faster-greedy-dag`: a node's cost is the sum
//! over the *set* of classes it depends on, each counted once. It is not guaranteed optimal
//! (that is an ILP), but it never double counts sharing, and it is fast enough for BERT-sized
//! graphs.

use crate::analysis::EGraph;
use crate::lang::KNode;
use egg::Id;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// The classes a choice depends on, each with the cost of its chosen node, sorted by class.
#[derive(Debug, Default)]
struct CostSet {
    entries: Vec<(Id, f64)>,
    total: f64,
}

fn union(sets: &[&CostSet]) -> Vec<(Id, f64)> {
    let mut out: Vec<(Id, f64)> = Vec::with_capacity(sets.iter().map(|s| s.entries.len()).max().unwrap_or(0));
    for s in sets {
        if out.is_empty() {
            out.extend_from_slice(&s.entries);
            continue;
        }
        let mut merged = Vec::with_capacity(out.len() + s.entries.len());
        let (mut i, mut j) = (0, 0);
        while i < out.len() && j < s.entries.len() {
            match out[i].0.cmp(&s.entries[j].0) {
                std::cmp::Ordering::Less => {
                    merged.push(out[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    merged.push(s.entries[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    merged.push(out[i]);
                    i += 1;
                    j += 1;
                }
            }
        }
        merged.extend_from_slice(&out[i..]);
        merged.extend_from_slice(&s.entries[j..]);
        out = merged;
    }
    out
}

/// The chosen node of every class reachable from the roots, and the estimated total.
#[derive(Debug)]
pub struct Extraction {
    /// The chosen e-node per canonical class.
    pub choice: HashMap<Id, KNode>,
    /// The estimated time of the roots' graph, s.
    pub cost: f64,
}

/// A cost function: the node's own time given its class.
pub type NodeCost<'a> = dyn Fn(&EGraph, Id, &KNode) -> f64 + 'a;

/// The cost of the graph the roots reach under `choice` (classes it lacks take `fallback`'s
/// node), each class counted once; `None` if that graph has a cycle or misses a class.
fn dag_cost(
    eg: &EGraph,
    roots: &[Id],
    choice: &HashMap<Id, KNode>,
    fallback: &HashMap<Id, KNode>,
    cost: &NodeCost<'_>,
) -> Option<(f64, HashMap<Id, KNode>)> {
    let mut used: HashMap<Id, KNode> = HashMap::new();
    let mut state: HashMap<Id, bool> = HashMap::new(); // false: on the path, true: done
    let mut total = 0.0;
    let mut stack: Vec<(Id, bool)> = roots.iter().map(|&r| (eg.find(r), false)).collect();
    while let Some((c, expanded)) = stack.pop() {
        if expanded {
            state.insert(c, true);
            continue;
        }
        match state.get(&c) {
            Some(true) => continue,
            Some(false) => return None,
            None => {}
        }
        let n = choice.get(&c).or_else(|| fallback.get(&c))?.clone();
        state.insert(c, false);
        stack.push((c, true));
        total += cost(eg, c, &n);
        for &a in &n.args {
            let a = eg.find(a);
            match state.get(&a) {
                Some(false) => return None,
                Some(true) => {}
                None => stack.push((a, false)),
            }
        }
        used.insert(c, n);
    }
    Some((total, used))
}

/// Improves a greedy choice where it missed sharing: for a class that alternatives of several
/// chosen classes read but the choice does not compute (a convolution that two epilogues would
/// each recompute), tries computing it once and switching those classes to the alternatives
/// that read it. Keeps a trial when the whole graph gets cheaper.
pub fn improve(eg: &EGraph, roots: &[Id], ex: &mut Extraction, best: &HashMap<Id, KNode>, cost: &NodeCost<'_>) {
    let mut readers: HashMap<Id, Vec<(Id, KNode)>> = HashMap::new();
    let mut chosen: Vec<Id> = ex.choice.keys().copied().collect();
    chosen.sort();
    for &c in &chosen {
        for n in &eg[c].nodes {
            if Some(n) == ex.choice.get(&c) {
                continue;
            }
            let mut seen = vec![];
            for &a in &n.args {
                let a = eg.find(a);
                if !ex.choice.contains_key(&a) && !seen.contains(&a) {
                    seen.push(a);
                    readers.entry(a).or_default().push((c, n.clone()));
                }
            }
        }
    }
    let mut candidates: Vec<Id> = readers
        .iter()
        .filter(|(_, r)| {
            let mut cs: Vec<Id> = r.iter().map(|(c, _)| *c).collect();
            cs.sort();
            cs.dedup();
            cs.len() >= 2
        })
        .map(|(&k, _)| k)
        .collect();
    candidates.sort();
    improve_shared(eg, roots, ex, best, cost, &readers, candidates);
    improve_sunk(eg, roots, ex, best, cost);
}

/// Single switches whose inputs the graph computes anyway: greedy choice counts an input's
/// cost against the class that reads it, even when another class pays for it already.
fn improve_sunk(eg: &EGraph, roots: &[Id], ex: &mut Extraction, best: &HashMap<Id, KNode>, cost: &NodeCost<'_>) {
    for _round in 0..3 {
        let mut better = false;
        let mut chosen: Vec<Id> = ex.choice.keys().copied().collect();
        chosen.sort();
        for c in chosen {
            let Some(current) = ex.choice.get(&c).cloned() else { continue };
            for n in &eg[c].nodes {
                if *n == current || !n.args.iter().all(|&a| ex.choice.contains_key(&eg.find(a))) {
                    continue;
                }
                let mut trial = ex.choice.clone();
                trial.insert(c, n.clone());
                if let Some((total, used)) = dag_cost(eg, roots, &trial, best, cost) {
                    if total < ex.cost * (1.0 - 1e-9) {
                        ex.cost = total;
                        ex.choice = used;
                        better = true;
                        break;
                    }
                }
            }
        }
        if !better {
            break;
        }
    }
}

/// Tries computing once a class that several chosen classes' alternatives read.
fn improve_shared(
    eg: &EGraph,
    roots: &[Id],
    ex: &mut Extraction,
    best: &HashMap<Id, KNode>,
    cost: &NodeCost<'_>,
    readers: &HashMap<Id, Vec<(Id, KNode)>>,
    candidates: Vec<Id>,
) {
    for k in candidates {
        if ex.choice.contains_key(&k) {
            continue;
        }
        let mut trial = ex.choice.clone();
        let mut switched: HashMap<Id, (f64, KNode)> = HashMap::new();
        for (c, n) in &readers[&k] {
            let own = cost(eg, *c, n);
            if switched.get(c).is_none_or(|(o, _)| own < *o) {
                switched.insert(*c, (own, n.clone()));
            }
        }
        for (c, (_, n)) in switched {
            trial.insert(c, n);
        }
        if let Some((total, used)) = dag_cost(eg, roots, &trial, best, cost) {
            if total < ex.cost * (1.0 - 1e-9) {
                ex.cost = total;
                ex.choice = used;
            }
        }
    }
}

/// Extracts the cheapest graph for `roots` under `node_cost` (given the node and its class).
///
/// Also returns the best node of every class, which [`improve`] falls back on.
pub fn extract(egraph: &EGraph, roots: &[Id], node_cost: &NodeCost<'_>) -> Option<(Extraction, HashMap<Id, KNode>)> {
    // Who uses each class, to revisit them when its choice gets cheaper.
    let mut users: HashMap<Id, Vec<(Id, usize)>> = HashMap::new();
    let mut pending: VecDeque<(Id, usize)> = VecDeque::new();
    for class in egraph.classes() {
        for (i, n) in class.nodes.iter().enumerate() {
            if n.args.is_empty() {
                pending.push_back((class.id, i));
            }
            for &c in &n.args {
                users.entry(egraph.find(c)).or_default().push((class.id, i));
            }
        }
    }
    let mut best: HashMap<Id, (Rc<CostSet>, usize)> = HashMap::new();
    let mut own_cost: HashMap<(Id, usize), f64> = HashMap::new();
    while let Some((cid, i)) = pending.pop_front() {
        let n = &egraph[cid].nodes[i];
        let mut kids: Vec<&CostSet> = Vec::with_capacity(n.args.len());
        let mut ready = true;
        for &c in &n.args {
            match best.get(&egraph.find(c)) {
                Some((s, _)) => kids.push(s),
                None => {
                    ready = false;
                    break;
                }
            }
        }
        if !ready {
            continue;
        }
        let mut entries = union(&kids);
        if entries.binary_search_by(|e| e.0.cmp(&cid)).is_ok() {
            continue; // the node depends on its own class: a cycle
        }
        let own = *own_cost.entry((cid, i)).or_insert_with(|| node_cost(egraph, cid, n));
        let pos = entries.binary_search_by(|e| e.0.cmp(&cid)).unwrap_err();
        entries.insert(pos, (cid, own));
        let total: f64 = entries.iter().map(|e| e.1).sum();
        let better = match best.get(&cid) {
            None => true,
            Some((s, _)) => total < s.total * (1.0 - 1e-9) - 1e-15,
        };
        if better {
            best.insert(cid, (Rc::new(CostSet { entries, total }), i));
            if let Some(us) = users.get(&cid) {
                pending.extend(us.iter().copied());
            }
        }
    }
    // The roots' choices, and the cost of their union.
    let mut choice = HashMap::new();
    let mut stack: Vec<Id> = roots.iter().map(|&r| egraph.find(r)).collect();
    let mut root_sets = vec![];
    for r in &stack {
        root_sets.push(best.get(r)?.0.clone());
    }
    let refs: Vec<&CostSet> = root_sets.iter().map(|s| s.as_ref()).collect();
    let cost = union(&refs).iter().map(|e| e.1).sum();
    while let Some(c) = stack.pop() {
        if choice.contains_key(&c) {
            continue;
        }
        let (_, i) = best.get(&c)?;
        let n = egraph[c].nodes[*i].clone();
        for &a in &n.args {
            stack.push(egraph.find(a));
        }
        choice.insert(c, n);
    }
    let all = best.iter().map(|(&c, (_, i))| (c, egraph[c].nodes[*i].clone())).collect();
    Some((Extraction { choice, cost }, all))
}
