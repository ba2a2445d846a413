//! A fault on the GPU is reported with the launch that caused it.
//!
//! A kernel that reads far outside its buffers leaves the CUDA context unusable, so each case
//! runs in a child process of this test binary (`fault_child`, selected by `KILN_FAULT_MODE`):
//! by default the error names the run and says how to find the launch; with `sync_steps` it
//! names the node and the kernel.
//!
//! Without a CUDA driver the test prints why it is skipped and passes; with
//! `KILN_REQUIRE_GPU=1` (the GPU check script sets it) a missing GPU fails instead.

use kiln::cuda::plan::{Arg, StepKind};
use kiln::gpu::{load_plan, GpuOptions};
use kiln::ir::ops::elementwise::UnaryOp;
use kiln::ir::ops::ElementwiseOp;
use kiln::ir::{DType, Graph, Op, Tensor, TypeInfo, Value, ValueInfo};
use kiln::runtime::exec::ExecutionContext;
use std::process::Command;

const N: usize = 4096;

/// A plan of one Relu over `N` floats whose kernel reads its input with a stride of 2^28
/// elements (1 GiB): every element but the first lies far outside any allocation.
fn faulting_plan() -> kiln::cuda::plan::Plan {
    let mut g = Graph::new("fault");
    let x = g.add_input("x", TypeInfo::known(DType::F32, &[N]));
    let out = vec![ValueInfo::tensor("y", TypeInfo::known(DType::F32, &[N]))];
    let id = g.add_node("relu", Op::Elementwise(ElementwiseOp::Unary(UnaryOp::Relu)), &[Some(x)], out);
    g.add_output("y", Value { node: id, slot: 0 });
    let mut plan = kiln::cuda::plan::plan(&g).unwrap();
    let mut patched = 0;
    for step in &mut plan.steps {
        let StepKind::Kernel(k) = &mut step.kind else { continue };
        for arg in &mut k.args {
            if let Arg::Elementwise { inputs, .. } = arg {
                for (_, strides) in inputs.iter_mut() {
                    strides.iter_mut().for_each(|s| *s = 1 << 28);
                    patched += 1;
                }
            }
        }
    }
    assert_eq!(patched, 1, "expected one elementwise input to patch:\n{plan}");
    plan
}

/// The child: runs the faulting plan and prints the error it gets.
#[test]
fn fault_child() {
    let Ok(mode) = std::env::var("KILN_FAULT_MODE") else { return };
    let mut opts = GpuOptions::default();
    opts.exec.sync_steps = mode == "sync";
    let engine = load_plan(faulting_plan(), &opts).unwrap();
    let mut ctx = ExecutionContext::new(engine).unwrap();
    let x = Tensor::from_vec(vec![N], vec![1.0f32; N]).unwrap();
    match ctx.run(&[x]) {
        Ok(_) => println!("FAULT-RESULT: no error"),
        Err(e) => println!("FAULT-RESULT: {e}"),
    }
}

fn child(mode: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fault_child", "--nocapture", "--test-threads=1"])
        .env("KILN_FAULT_MODE", mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The test harness prints "test fault_child ... " on the same line first.
    let line = stdout.lines().find_map(|l| l.split_once("FAULT-RESULT: ")).map(|(_, r)| r.to_string());
    line.unwrap_or_else(|| {
        panic!("the {mode} child printed no result:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

#[test]
fn a_gpu_fault_is_reported_with_its_launch() {
    if let Err(e) = kiln::cuda::driver::Gpu::new(0) {
        assert!(std::env::var("KILN_REQUIRE_GPU").as_deref() != Ok("1"), "KILN_REQUIRE_GPU=1 but {e}");
        eprintln!("skipped a_gpu_fault_is_reported_with_its_launch: {e}");
        return;
    }
    let sync = child("sync");
    eprintln!("with sync_steps: {sync}");
    assert!(sync.contains("node relu (fused_") && sync.contains("faulted while it ran"), "{sync}");
    assert!(faulted(&sync), "{sync}");
    let default = child("default");
    eprintln!("by default: {default}");
    assert!(default.contains("run 1 of the engine failed in one of its 1 launches"), "{default}");
    assert!(faulted(&default) && default.contains("KILN_SYNC_STEPS=1"), "{default}");
}

/// Whether the driver's error is a bad memory access: an unmapped address, or (on an H100,
/// for addresses beyond the global window) one outside the global address space.
fn faulted(msg: &str) -> bool {
    msg.contains("ILLEGAL_ADDRESS") || msg.contains("INVALID_ADDRESS_SPACE")
}
