//! The activation memory plan: every activation of a [`Plan`] gets an offset in one arena,
//! reusing the memory of values that are dead by the time a value is written.
//!
//! Inputs and temporaries live in the arena (inputs are copied in, so that every address is
//! fixed and a CUDA graph can replay the run); views share their owner's memory; constants live
//! with the weights. A buffer lives from the first step that mentions it (values are written
//! once, so that is its write; an input lives from step 0) to its last mention or its
//! [`Buffer::last_use`](kiln_cuda::plan::Buffer::last_use), whichever is later; a graph output
//! lives to the end. Offsets come from greedy-by-size interval packing, the scheme of TFLite's
//! and TensorRT's memory planners: the largest buffer first, each at the lowest aligned offset
//! that no buffer alive at the same time occupies.

use kiln_cuda::plan::{Arg, BufferId, BufferKind, Field, GemmEpilogue, ModuleRef, Plan, Step, StepKind};

/// Alignment of every offset in the arena, in bytes (cuBLASLt and cuDNN want 256 for their
/// best kernels, and it covers every vector width the kernels use).
pub const ALIGN: u64 = 256;

/// Where each buffer of a plan lives in the arena.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MemoryPlan {
    /// One per buffer: the byte offset in the arena of the buffers that live there (inputs and
    /// temporaries), `None` for views and constants.
    pub offsets: Vec<Option<u64>>,
    /// One per buffer: its size in bytes.
    pub sizes: Vec<u64>,
    /// Bytes of the arena: activations and the workspace.
    pub arena_bytes: u64,
    /// What the arena would take without reuse: every arena buffer's size rounded up to
    /// [`ALIGN`], plus the workspace.
    pub naive_bytes: u64,
    /// Offset of the cuBLASLt/cuDNN workspace, live for the whole run.
    pub workspace_offset: u64,
    /// Size of the workspace.
    pub workspace_bytes: u64,
}

/// `x` rounded up to a multiple of [`ALIGN`], saturating.
pub fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// The size in bytes of buffer `b`, or `None` if it overflows a `u64`.
pub fn buffer_bytes(plan: &Plan, b: BufferId) -> Option<u64> {
    let buf = &plan.buffers[b];
    buf.shape.iter().try_fold(buf.dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Whether a buffer of this kind gets memory in the arena.
fn in_arena(kind: &BufferKind) -> bool {
    match kind {
        BufferKind::Input(_) | BufferKind::Temp => true,
        BufferKind::Const(_) | BufferKind::View(_) => false,
    }
}

/// Every buffer a step mentions, read or written, in the order they appear (with repeats).
/// One exhaustive match per type, so that a new kind of step or argument is a compile error
/// here rather than a buffer the memory plan does not see.
pub fn step_buffers(step: &Step) -> Vec<BufferId> {
    let mut out = vec![];
    match &step.kind {
        StepKind::Kernel(k) => {
            match k.module {
                ModuleRef::Family(_) | ModuleRef::Generated(_) => {}
            }
            for a in &k.args {
                match a {
                    Arg::Buffer(b) => out.push(*b),
                    Arg::Null | Arg::I64(_) | Arg::I32(_) | Arg::F32(_) => {}
                    Arg::Struct(fields) => {
                        for f in fields {
                            match f {
                                Field::Ptr { buffer, offset_bytes: _ } => out.push(*buffer),
                                Field::Null | Field::I64(_) | Field::F64(_) | Field::F32I32(..) => {}
                            }
                        }
                    }
                    Arg::Elementwise { inputs, output } => {
                        out.extend(inputs.iter().map(|(b, _)| *b));
                        out.push(*output);
                    }
                }
            }
        }
        StepKind::Gemm(g) => {
            out.extend([g.a, g.b]);
            out.extend(g.c);
            out.push(g.d);
            match g.epilogue {
                GemmEpilogue::None | GemmEpilogue::Relu | GemmEpilogue::Gelu => {}
                GemmEpilogue::Bias(b) | GemmEpilogue::ReluBias(b) | GemmEpilogue::GeluBias(b) => out.push(b),
            }
        }
        StepKind::Conv(c) => {
            out.extend([c.x, c.w]);
            out.extend(c.bias);
            out.extend(c.z);
            out.push(c.y);
        }
    }
    out
}

/// The buffer whose memory `b` uses: its owner for a view, itself otherwise.
fn owner(plan: &Plan, b: BufferId) -> BufferId {
    match plan.buffers[b].kind {
        BufferKind::View(o) => o,
        _ => b,
    }
}

/// For each buffer that lives in the arena, the first and last step (inclusive) during which
/// its memory must hold it; `plan.steps.len()` stands for "after the last step". `None` for
/// buffers outside the arena. Buffer ids must be in range (the engine reader checks them
/// before calling this).
pub fn lifetimes(plan: &Plan) -> Vec<Option<(usize, usize)>> {
    let n = plan.buffers.len();
    let mut first: Vec<Option<usize>> = vec![None; n];
    let mut last: Vec<Option<usize>> = vec![None; n];
    for (s, step) in plan.steps.iter().enumerate() {
        for b in step_buffers(step) {
            let o = owner(plan, b);
            first[o].get_or_insert(s);
            last[o] = Some(s);
        }
    }
    let end = plan.steps.len();
    (0..n)
        .map(|b| {
            let buf = &plan.buffers[b];
            if !in_arena(&buf.kind) {
                return None;
            }
            // An error flag is cleared before the first step and read after the last.
            let flag = plan.error_flags.iter().any(|(f, _)| *f == b);
            let start = match buf.kind {
                BufferKind::Input(_) => 0,
                _ if flag => 0,
                _ => first[b].unwrap_or(0),
            };
            let mut stop = last[b].max(buf.last_use).unwrap_or(start).max(start);
            if buf.output || flag {
                stop = end;
            }
            Some((start, stop))
        })
        .collect()
}

struct Region {
    start: usize,
    end: usize,
    size: u64,
    id: usize,
}

/// Plans the arena of `plan`, with a workspace of `workspace_bytes` for cuBLASLt and cuDNN.
pub fn plan_memory(plan: &Plan, workspace_bytes: usize) -> MemoryPlan {
    let n = plan.buffers.len();
    let sizes: Vec<u64> = (0..n).map(|b| buffer_bytes(plan, b).unwrap_or(u64::MAX)).collect();
    let life = lifetimes(plan);
    let end = plan.steps.len();
    // The workspace is region `n`, live throughout.
    let mut regions: Vec<Region> = life
        .iter()
        .enumerate()
        .filter_map(|(id, l)| l.map(|(start, end)| Region { start, end, size: sizes[id], id }))
        .collect();
    regions.push(Region { start: 0, end, size: workspace_bytes as u64, id: n });
    let naive_bytes = regions.iter().fold(0u64, |acc, r| acc.saturating_add(align_up(r.size)));
    regions.sort_by(|a, b| b.size.cmp(&a.size).then(a.start.cmp(&b.start)).then(a.id.cmp(&b.id)));

    let mut placed: Vec<(usize, usize, u64, u64)> = vec![]; // start, end, offset, size
    let mut offsets = vec![None; n + 1];
    let mut arena_bytes = 0u64;
    for r in &regions {
        let mut live: Vec<(u64, u64)> = placed
            .iter()
            .filter(|p| p.0 <= r.end && r.start <= p.1 && p.3 > 0)
            .map(|p| (p.2, p.2.saturating_add(p.3)))
            .collect();
        live.sort_unstable();
        let mut at = 0u64;
        if r.size > 0 {
            for (lo, hi) in live {
                if at.saturating_add(r.size) <= lo {
                    break;
                }
                at = at.max(align_up(hi));
            }
        }
        offsets[r.id] = Some(at);
        placed.push((r.start, r.end, at, r.size));
        arena_bytes = arena_bytes.max(at.saturating_add(r.size));
    }
    let workspace_offset = offsets.pop().flatten().unwrap_or(0);
    MemoryPlan {
        offsets,
        sizes,
        arena_bytes: align_up(arena_bytes),
        naive_bytes,
        workspace_offset,
        workspace_bytes: workspace_bytes as u64,
    }
}

/// Checks that `memory` is a sound arena for `plan`: one offset and size per buffer, an offset
/// exactly for the buffers that live in the arena, every offset aligned, every region inside
/// the arena, and no two regions that are alive at the same time overlapping in memory (the
/// workspace is alive throughout). Buffer ids of `plan` must be in range.
pub fn verify(plan: &Plan, memory: &MemoryPlan) -> Result<(), String> {
    let n = plan.buffers.len();
    if memory.offsets.len() != n || memory.sizes.len() != n {
        return Err(format!("{} buffers, but {} offsets and {} sizes", n, memory.offsets.len(), memory.sizes.len()));
    }
    let life = lifetimes(plan);
    let mut regions = vec![];
    for b in 0..n {
        let want = buffer_bytes(plan, b).ok_or_else(|| format!("buffer {b}: its size overflows"))?;
        if memory.sizes[b] != want {
            return Err(format!("buffer {b}: size {} where its shape needs {want}", memory.sizes[b]));
        }
        match (life[b], memory.offsets[b]) {
            (Some((start, end)), Some(off)) => regions.push((format!("buffer {b}"), start, end, off, want)),
            (None, None) => {}
            (Some(_), None) => return Err(format!("buffer {b} lives in the arena but has no offset")),
            (None, Some(_)) => return Err(format!("buffer {b} is not in the arena but has an offset")),
        }
    }
    regions.push(("the workspace".to_string(), 0, plan.steps.len(), memory.workspace_offset, memory.workspace_bytes));
    for (what, _, _, off, size) in &regions {
        if off % ALIGN != 0 {
            return Err(format!("{what}: offset {off} is not a multiple of {ALIGN}"));
        }
        if off.checked_add(*size).is_none_or(|e| e > memory.arena_bytes) {
            return Err(format!("{what}: {size} bytes at {off} run past the arena's {} bytes", memory.arena_bytes));
        }
    }
    // Sweep in offset order: only regions that start before another's end can overlap it.
    let mut by_offset: Vec<&(String, usize, usize, u64, u64)> = regions.iter().filter(|r| r.4 > 0).collect();
    by_offset.sort_by_key(|r| r.3);
    for (i, a) in by_offset.iter().enumerate() {
        for b in &by_offset[i + 1..] {
            if b.3 >= a.3 + a.4 {
                break;
            }
            if a.1 <= b.2 && b.1 <= a.2 {
                return Err(format!(
                    "{} (steps {}..={}, bytes {}..{}) and {} (steps {}..={}, bytes {}..{}) overlap",
                    a.0,
                    a.1,
                    a.2,
                    a.3,
                    a.3 + a.4,
                    b.0,
                    b.1,
                    b.2,
                    b.3,
                    b.3 + b.4
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cuda::driver::LaunchConfig;
    use kiln_cuda::plan::{Buffer, KernelStep};
    use kiln_ir::DType;
    use proptest::prelude::*;

    fn buffer(kind: BufferKind, elems: usize) -> Buffer {
        Buffer { name: String::new(), dtype: DType::F32, shape: vec![elems], kind, output: false, last_use: None }
    }

    fn kernel(args: &[BufferId]) -> Step {
        Step {
            node: String::new(),
            kind: StepKind::Kernel(KernelStep {
                module: ModuleRef::Generated(0),
                kernel: "k".into(),
                config: LaunchConfig::linear(1, 1),
                args: args.iter().map(|&b| Arg::Buffer(b)).collect(),
            }),
        }
    }

    /// A plan of `kinds` buffers (f32, `elems` each) and one kernel step per list of buffers,
    /// with `last_use` as the planner sets it and the last buffer an output.
    fn plan_of(kinds: Vec<(BufferKind, usize)>, steps: &[Vec<BufferId>]) -> Plan {
        let mut p = Plan {
            buffers: kinds.into_iter().map(|(k, e)| buffer(k, e)).collect(),
            steps: steps.iter().map(|s| kernel(s)).collect(),
            ..Plan::default()
        };
        for (s, step) in steps.iter().enumerate() {
            for &b in step {
                p.buffers[b].last_use = Some(s);
            }
        }
        let last = p.buffers.len() - 1;
        p.buffers[last].output = true;
        p.outputs.push(last);
        p
    }

    #[test]
    fn a_chain_reuses_memory() {
        // x -> t1 -> t2 -> t3 -> t4, each step reading one and writing the next: at most two
        // are alive at once, so four temporaries of 1000 bytes fit in the space of two.
        let mut kinds = vec![(BufferKind::Input(0), 250)];
        kinds.extend((0..4).map(|_| (BufferKind::Temp, 250)));
        let p = plan_of(kinds, &[vec![0, 1], vec![1, 2], vec![2, 3], vec![3, 4]]);
        let m = plan_memory(&p, 0);
        verify(&p, &m).unwrap();
        assert_eq!(m.naive_bytes, 5 * 1024);
        assert_eq!(m.arena_bytes, 2 * 1024, "{m:?}");
        assert_eq!(m.offsets[0], m.offsets[2]);
        assert_eq!(m.offsets[1], m.offsets[3]);
    }

    #[test]
    fn views_and_constants_stay_out_of_the_arena_and_views_extend_their_owner() {
        let kinds = vec![
            (BufferKind::Input(0), 64),
            (BufferKind::Const(kiln_ir::Tensor::from_vec(vec![64], vec![0f32; 64]).unwrap()), 64),
            (BufferKind::Temp, 64),
            (BufferKind::View(2), 64),
            (BufferKind::Temp, 64),
            (BufferKind::Temp, 64),
        ];
        // Step 2 reads the view of t2, so t2 must stay alive through step 2 and t5 may not
        // take its place.
        let mut p = plan_of(kinds, &[vec![0, 1, 2], vec![0, 4], vec![3, 4, 5]]);
        p.buffers[2].last_use = Some(2);
        let m = plan_memory(&p, 4096);
        verify(&p, &m).unwrap();
        assert_eq!(m.offsets[1], None);
        assert_eq!(m.offsets[3], None);
        assert_ne!(m.offsets[2], m.offsets[5]);
        assert_eq!(lifetimes(&p)[2], Some((0, 2)));
        assert_eq!(m.workspace_bytes, 4096);
        assert_eq!(m.workspace_offset, 0, "the largest region goes first, at 0");
    }

    /// Found on the GPU: a Gather's out-of-range flag shared its memory with a later
    /// activation, so every BERT run reported a bad index. Flags live for the whole run.
    #[test]
    fn error_flags_live_from_before_the_first_step_to_after_the_last() {
        let mut kinds = vec![(BufferKind::Input(0), 250), (BufferKind::Temp, 1)];
        kinds.extend((0..3).map(|_| (BufferKind::Temp, 250)));
        let mut p = plan_of(kinds, &[vec![0, 1, 2], vec![2, 3], vec![3, 4]]);
        p.error_flags.push((1, "an index is out of range".into()));
        assert_eq!(lifetimes(&p)[1], Some((0, 3)));
        let m = plan_memory(&p, 0);
        verify(&p, &m).unwrap();
        for b in [0, 2, 3, 4] {
            assert_ne!(m.offsets[1], m.offsets[b], "the flag shares memory with buffer {b}");
        }
    }

    #[test]
    fn verify_names_overlapping_buffers() {
        let p = plan_of(vec![(BufferKind::Input(0), 64), (BufferKind::Temp, 64)], &[vec![0, 1]]);
        let mut m = plan_memory(&p, 0);
        m.offsets[1] = m.offsets[0];
        let err = verify(&p, &m).unwrap_err();
        assert!(err.contains("buffer 0") && err.contains("buffer 1") && err.contains("overlap"), "{err}");
        let mut m = plan_memory(&p, 0);
        m.offsets[1] = Some(m.arena_bytes);
        assert!(verify(&p, &m).unwrap_err().contains("run past the arena"));
    }

    proptest! {
        /// Random buffers with random lifetimes and odd sizes: the plan always verifies, never
        /// takes more than the naive arena, and is never smaller than the most bytes alive at
        /// one step.
        #[test]
        fn packing_is_sound_and_no_worse_than_naive(
            sizes in prop::collection::vec(prop_oneof![Just(0usize), 1usize..4, 1usize..300, 700usize..5000], 1..40),
            spans in prop::collection::vec((0usize..30, 0usize..12), 40),
            workspace in prop_oneof![Just(0usize), 1usize..100_000],
        ) {
            let n = sizes.len();
            let steps = 30;
            let mut step_args: Vec<Vec<BufferId>> = vec![vec![]; steps];
            for b in 0..n {
                let (start, len) = spans[b];
                step_args[start].push(b);
                step_args[(start + len).min(steps - 1)].push(b);
            }
            let kinds = sizes.iter().enumerate().map(|(b, &e)| {
                (if b % 5 == 0 { BufferKind::Input(b) } else { BufferKind::Temp }, e)
            }).collect();
            let p = plan_of(kinds, &step_args);
            let m = plan_memory(&p, workspace);
            prop_assert!(verify(&p, &m).is_ok(), "{:?}", verify(&p, &m));
            prop_assert!(m.arena_bytes <= m.naive_bytes, "{} > {}", m.arena_bytes, m.naive_bytes);
            let life = lifetimes(&p);
            let peak = (0..=steps).map(|s| {
                (0..n).filter(|&b| life[b].is_some_and(|(a, z)| a <= s && s <= z)).map(|b| m.sizes[b]).sum::<u64>()
            }).max().unwrap_or(0) + workspace as u64;
            prop_assert!(m.arena_bytes >= peak);
        }
    }
}
