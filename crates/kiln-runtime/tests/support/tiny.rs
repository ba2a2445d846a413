//! A tiny hand-made engine with every kind of buffer, step, argument and struct field, and
//! dummy CUBINs: the format tests run on it without NVRTC, and it is the fuzz seed.
#![allow(dead_code)] // each includer uses part of it

use kiln_cuda::codegen::ElementwiseKernel;
use kiln_cuda::driver::LaunchConfig;
use kiln_cuda::kernels::KernelFamily;
use kiln_cuda::plan::{
    Arg, Buffer, BufferKind, ConvActivation, ConvStep, Field, GemmEpilogue, GemmStep, KernelStep, ModuleRef, Plan,
    Step, StepKind,
};
use kiln_ir::{DType, Tensor};
use kiln_runtime::engine::{module_names, CubinEntry, EngineFile, EngineHeader};
use kiln_runtime::memory::plan_memory;

fn buffer(name: &str, dtype: DType, shape: &[usize], kind: BufferKind, last_use: usize) -> Buffer {
    Buffer { name: name.into(), dtype, shape: shape.to_vec(), kind, output: false, last_use: Some(last_use) }
}

fn konst(shape: &[usize]) -> BufferKind {
    let n: usize = shape.iter().product();
    BufferKind::Const(Tensor::from_vec(shape.to_vec(), (0..n).map(|i| i as f32 * 0.25 - 1.0).collect()).unwrap())
}

/// x[2,8] @ w[8,4] + b, ReLU (cuBLASLt) -> h; h viewed as [1,2,2,2] through a 1x1 convolution
/// with ReLU -> c; a generated kernel -> y (the output); a layout kernel with every argument
/// kind, raising an error flag.
pub fn tiny_plan() -> Plan {
    let f = DType::F32;
    let mut buffers = vec![
        buffer("x", f, &[2, 8], BufferKind::Input(0), 0),
        buffer("w", f, &[8, 4], konst(&[8, 4]), 0),
        buffer("b", f, &[4], konst(&[4]), 0),
        buffer("h", f, &[2, 4], BufferKind::Temp, 1),
        buffer("hv", f, &[1, 2, 2, 2], BufferKind::View(3), 1),
        buffer("cw", f, &[2, 2, 1, 1], konst(&[2, 2, 1, 1]), 1),
        buffer("c", f, &[1, 2, 2, 2], BufferKind::Temp, 2),
        buffer("y", f, &[1, 2, 2, 2], BufferKind::Temp, 3),
        buffer("flag", DType::I32, &[1], BufferKind::Temp, 3),
    ];
    buffers[7].output = true;
    let generated = vec![ElementwiseKernel {
        name: "fused_tiny_f32".into(),
        source: "extern \"C\" __global__ void fused_tiny_f32() {}".into(),
        generated: "y = x;".into(),
        inputs: vec![f],
        output: f,
        vec: 4,
    }];
    let steps = vec![
        Step {
            node: "fc".into(),
            kind: StepKind::Gemm(GemmStep {
                a: 0,
                b: 1,
                c: None,
                d: 3,
                m: 2,
                n: 4,
                k: 8,
                batch: 1,
                batch_strides: [0, 0, 0],
                trans_a: false,
                trans_b: false,
                alpha: 1.0,
                beta: 0.0,
                dtype: f,
                out_dtype: f,
                epilogue: GemmEpilogue::ReluBias(2),
            }),
        },
        Step {
            node: "conv".into(),
            kind: StepKind::Conv(ConvStep {
                x: 4,
                w: 5,
                bias: None,
                z: None,
                y: 6,
                x_shape: vec![1, 2, 2, 2],
                w_shape: vec![2, 2, 1, 1],
                y_shape: vec![1, 2, 2, 2],
                pads: vec![0, 0],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                groups: 1,
                dtype: f,
                activation: ConvActivation::Relu,
                channels_last: false,
            }),
        },
        Step {
            node: "fused".into(),
            kind: StepKind::Kernel(KernelStep {
                module: ModuleRef::Generated(0),
                kernel: "fused_tiny_f32".into(),
                config: LaunchConfig::linear(1, 128),
                args: vec![Arg::Elementwise { inputs: vec![(6, vec![8, 4, 2, 1])], output: 7 }],
            }),
        },
        Step {
            node: "gather".into(),
            kind: StepKind::Kernel(KernelStep {
                module: ModuleRef::Family(KernelFamily::Layout),
                kernel: "gather_u32".into(),
                config: LaunchConfig { grid: (1, 2, 3), block: (32, 1, 1), shared_bytes: 64 },
                args: vec![
                    Arg::Struct(vec![
                        Field::Ptr { buffer: 7, offset_bytes: 4 },
                        Field::Null,
                        Field::I64(-3),
                        Field::F64(0.5),
                        Field::F32I32(0.125, 7),
                    ]),
                    Arg::Buffer(8),
                    Arg::Null,
                    Arg::I64(1 << 40),
                    Arg::I32(-1),
                    Arg::F32(2.5),
                ],
            }),
        },
    ];
    Plan {
        buffers,
        generated,
        families: vec![KernelFamily::Layout],
        steps,
        outputs: vec![7],
        error_flags: vec![(8, "gather: an index is out of range".into())],
    }
}

/// The header every hand-made engine gets.
pub fn header(arch: &str) -> EngineHeader {
    EngineHeader {
        kiln_version: "0.1.0".into(),
        arch: arch.into(),
        nvrtc_version: "13.0".into(),
        cuda_version: "13.0".into(),
        options: vec![("workspace_bytes".into(), "1024".into())],
        description: "hand-made".into(),
    }
}

/// `plan` with dummy CUBINs for `arch`.
pub fn with_dummy_cubins(plan: Plan, arch: &str, workspace: usize) -> EngineFile {
    let cubins = module_names(&plan)
        .into_iter()
        .map(|name| CubinEntry { image: format!("\x7fELF dummy {name}").into_bytes(), name, arch: arch.into() })
        .collect();
    let memory = plan_memory(&plan, workspace);
    EngineFile::new(header(arch), plan, memory, cubins).unwrap_or_else(|e| panic!("{e}"))
}

/// The tiny engine for sm_90.
pub fn tiny_engine() -> EngineFile {
    with_dummy_cubins(tiny_plan(), "sm_90", 1024)
}
