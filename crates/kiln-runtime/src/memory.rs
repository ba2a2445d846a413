//! The activation memory plan. (Temporary stand-in; the real planner lands from the engine branch.)

use kiln_cuda::plan::{BufferKind, Plan};

/// Where each buffer lives in the arena.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MemoryPlan {
    /// Offset of each buffer in the arena, for arena buffers.
    pub offsets: Vec<Option<u64>>,
    /// Size of each buffer.
    pub sizes: Vec<u64>,
    /// Arena bytes.
    pub arena_bytes: u64,
    /// Sum of arena buffers.
    pub naive_bytes: u64,
    /// Workspace offset.
    pub workspace_offset: u64,
    /// Workspace bytes.
    pub workspace_bytes: u64,
}

/// Plans memory.
pub fn plan_memory(plan: &Plan, workspace_bytes: usize) -> MemoryPlan {
    let mut m = MemoryPlan::default();
    let mut at = 0u64;
    for b in &plan.buffers {
        let size = (b.shape.iter().product::<usize>() * b.dtype.size()) as u64;
        m.sizes.push(size);
        if matches!(b.kind, BufferKind::Temp | BufferKind::Input(_)) {
            m.offsets.push(Some(at));
            at += size.div_ceil(256) * 256;
            m.naive_bytes += size;
        } else {
            m.offsets.push(None);
        }
    }
    m.workspace_offset = at;
    m.workspace_bytes = workspace_bytes as u64;
    m.arena_bytes = at + workspace_bytes as u64;
    m
}
