//! The `.kiln` engine file: a launch plan with its memory plan, weights and CUBINs, built once
//! for one GPU architecture and loaded without NVRTC.
//!
//! Layout (all integers little-endian):
//!
//! | Bytes | What |
//! |---|---|
//! | 8 | magic `KILNENG\0` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 4 × 8 | lengths of the header, plan, weights and CUBIN sections |
//! | header | prost [`EngineHeader`]: Kiln, NVRTC and CUDA versions, target arch, options |
//! | plan | prost plan: buffers, generated kernels, families, steps, outputs, error flags, memory plan |
//! | padding | zeros up to a multiple of 256 |
//! | weights | each constant's bytes at a 256-aligned offset, referred to by the plan |
//! | CUBINs | prost list of (name, arch, image) |
//! | 32 | SHA-256 of everything before it |
//!
//! The reader checks the magic, the version, that the section lengths add up to the file's
//! length (so nothing is allocated that the file does not hold), the checksum, and then every
//! index and range in the decoded plan, so that a file with a valid checksum but made by hand
//! still cannot make the runtime read or write out of bounds. The mirror types below are
//! written by hand (no `.proto` build step); each conversion is one exhaustive match or
//! destructuring per type, so a new kind of step or argument is a compile error here.

use crate::memory::{self, MemoryPlan, ALIGN};
use kiln_cuda::codegen::{storage_type, ElementwiseKernel};
use kiln_cuda::driver::LaunchConfig;
use kiln_cuda::host::{tensor_bytes, tensor_from_bytes};
use kiln_cuda::kernels::KernelFamily;
use kiln_cuda::nvrtc::Nvrtc;
use kiln_cuda::plan::{
    Arg, Buffer, BufferId, BufferKind, ConvActivation, ConvStep, Field, GemmEpilogue, GemmStep, KernelStep, ModuleRef,
    Plan, Step, StepKind,
};
use kiln_cuda::CudaError;
use kiln_ir::DType;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use thiserror::Error;

/// The first eight bytes of every engine file.
pub const MAGIC: [u8; 8] = *b"KILNENG\0";
/// The format version this Kiln writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The CUDA version Kiln's runtime is built against (cudarc's `cuda-13000`).
pub const CUDA_VERSION: &str = "13.0";
/// The cuBLASLt/cuDNN workspace when the build options name none (`workspace_bytes`).
pub const DEFAULT_WORKSPACE_BYTES: usize = 32 << 20;
/// Bytes of the fixed part: magic, version and four section lengths.
pub const FIXED_BYTES: usize = 8 + 4 + 4 * 8;
const CHECKSUM_BYTES: usize = 32;

/// Everything that can be wrong with an engine file or its build.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The file does not start with [`MAGIC`].
    #[error("not a Kiln engine file (it does not start with KILNENG)")]
    NotEngine,
    /// The file is shorter than its own section lengths say.
    #[error("truncated engine file: expected {expected} bytes, found {found}")]
    Truncated {
        /// Bytes the fixed part promises.
        expected: u64,
        /// Bytes there are.
        found: u64,
    },
    /// The stored SHA-256 is not the checksum of the file.
    #[error("engine file checksum mismatch: stored {stored}, computed {computed} (the file is damaged)")]
    Checksum {
        /// The checksum in the file, in hex.
        stored: String,
        /// The checksum of the file's contents, in hex.
        computed: String,
    },
    /// A format version this Kiln does not read.
    #[error(
        "engine format version {found}, this Kiln reads version {FORMAT_VERSION}: rebuild the engine with this Kiln"
    )]
    Version {
        /// The file's version.
        found: u32,
    },
    /// The engine's CUBINs are for another GPU architecture.
    #[error("engine built for {engine}, this GPU is {gpu}: rebuild the engine on this GPU")]
    Arch {
        /// The engine's target, such as `sm_80`.
        engine: String,
        /// The GPU's, such as `sm_90`.
        gpu: String,
    },
    /// The file passes its checksum but its contents are inconsistent; names the field and
    /// the buffer or step.
    #[error("corrupt engine file: {0}")]
    Corrupt(String),
    /// The plan given to [`EngineFile::new`] or [`build_engine`] cannot be written.
    #[error("cannot build an engine: {0}")]
    Invalid(String),
    /// Compiling a kernel failed.
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

/// What an engine was built with and for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EngineHeader {
    /// The Kiln version that wrote it.
    pub kiln_version: String,
    /// The GPU architecture of its CUBINs, such as `sm_90`.
    pub arch: String,
    /// The NVRTC version that compiled them, such as `13.0`.
    pub nvrtc_version: String,
    /// The CUDA version the runtime targets.
    pub cuda_version: String,
    /// Build options, in the order given.
    pub options: Vec<(String, String)>,
    /// A description of the engine, with no timestamp so that builds are byte-identical.
    pub description: String,
}

/// One compiled module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CubinEntry {
    /// The kernel family's name, or the generated kernel's.
    pub name: String,
    /// Its architecture, such as `sm_90`.
    pub arch: String,
    /// The CUBIN.
    pub image: Vec<u8>,
}

/// An engine: a launch plan, its memory plan and its compiled kernels. Only [`EngineFile::new`]
/// and [`EngineFile::from_bytes`] make one, and both check it, so every buffer id, module
/// and range in it is valid.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineFile {
    header: EngineHeader,
    plan: Plan,
    memory: MemoryPlan,
    cubins: Vec<CubinEntry>,
}

// ---------------------------------------------------------------------------------------
// The mirror types. Tags are the format: never renumber one, only add.

#[derive(Clone, PartialEq, Message)]
struct HeaderMsg {
    #[prost(string, tag = "1")]
    kiln_version: String,
    #[prost(string, tag = "2")]
    arch: String,
    #[prost(string, tag = "3")]
    nvrtc_version: String,
    #[prost(string, tag = "4")]
    cuda_version: String,
    #[prost(message, repeated, tag = "5")]
    options: Vec<KeyValueMsg>,
    #[prost(string, tag = "6")]
    description: String,
}

#[derive(Clone, PartialEq, Message)]
struct KeyValueMsg {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct EmptyMsg {}

#[derive(Clone, PartialEq, Message)]
struct PlanMsg {
    #[prost(message, repeated, tag = "1")]
    buffers: Vec<BufferMsg>,
    #[prost(message, repeated, tag = "2")]
    generated: Vec<GeneratedMsg>,
    #[prost(string, repeated, tag = "3")]
    families: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    steps: Vec<StepMsg>,
    #[prost(uint64, repeated, tag = "5")]
    outputs: Vec<u64>,
    #[prost(message, repeated, tag = "6")]
    error_flags: Vec<ErrorFlagMsg>,
    #[prost(message, optional, tag = "7")]
    memory: Option<MemoryMsg>,
}

#[derive(Clone, PartialEq, Message)]
struct BufferMsg {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    dtype: String,
    #[prost(uint64, repeated, tag = "3")]
    shape: Vec<u64>,
    #[prost(bool, tag = "4")]
    output: bool,
    #[prost(uint64, optional, tag = "5")]
    last_use: Option<u64>,
    #[prost(oneof = "BufferKindMsg", tags = "6, 7, 8, 9")]
    kind: Option<BufferKindMsg>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum BufferKindMsg {
    #[prost(uint64, tag = "6")]
    Input(u64),
    #[prost(message, tag = "7")]
    Const(WeightMsg),
    #[prost(message, tag = "8")]
    Temp(EmptyMsg),
    #[prost(uint64, tag = "9")]
    View(u64),
}

/// A constant: its tensor's type and shape, and where its bytes lie in the weights section.
#[derive(Clone, PartialEq, Message)]
struct WeightMsg {
    #[prost(string, tag = "1")]
    dtype: String,
    #[prost(uint64, repeated, tag = "2")]
    shape: Vec<u64>,
    #[prost(uint64, tag = "3")]
    offset: u64,
    #[prost(uint64, tag = "4")]
    len: u64,
}

#[derive(Clone, PartialEq, Message)]
struct GeneratedMsg {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    source: String,
    #[prost(string, tag = "3")]
    generated: String,
    #[prost(string, repeated, tag = "4")]
    inputs: Vec<String>,
    #[prost(string, tag = "5")]
    output: String,
    #[prost(uint64, tag = "6")]
    vec: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StepMsg {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(oneof = "StepKindMsg", tags = "2, 3, 4")]
    kind: Option<StepKindMsg>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum StepKindMsg {
    #[prost(message, tag = "2")]
    Kernel(KernelMsg),
    #[prost(message, tag = "3")]
    Gemm(GemmMsg),
    #[prost(message, tag = "4")]
    Conv(ConvMsg),
}

#[derive(Clone, PartialEq, Message)]
struct KernelMsg {
    #[prost(oneof = "ModuleMsg", tags = "1, 2")]
    module: Option<ModuleMsg>,
    #[prost(string, tag = "3")]
    kernel: String,
    #[prost(uint32, repeated, tag = "4")]
    grid: Vec<u32>,
    #[prost(uint32, repeated, tag = "5")]
    block: Vec<u32>,
    #[prost(uint32, tag = "6")]
    shared_bytes: u32,
    #[prost(message, repeated, tag = "7")]
    args: Vec<ArgMsg>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ModuleMsg {
    #[prost(string, tag = "1")]
    Family(String),
    #[prost(uint64, tag = "2")]
    Generated(u64),
}

#[derive(Clone, PartialEq, Message)]
struct ArgMsg {
    #[prost(oneof = "ArgKindMsg", tags = "1, 2, 3, 4, 5, 6, 7")]
    kind: Option<ArgKindMsg>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ArgKindMsg {
    #[prost(uint64, tag = "1")]
    Buffer(u64),
    #[prost(message, tag = "2")]
    Null(EmptyMsg),
    #[prost(sint64, tag = "3")]
    I64(i64),
    #[prost(sint32, tag = "4")]
    I32(i32),
    #[prost(float, tag = "5")]
    F32(f32),
    #[prost(message, tag = "6")]
    Struct(StructMsg),
    #[prost(message, tag = "7")]
    Elementwise(ElementwiseArgMsg),
}

#[derive(Clone, PartialEq, Message)]
struct StructMsg {
    #[prost(message, repeated, tag = "1")]
    fields: Vec<FieldMsg>,
}

#[derive(Clone, PartialEq, Message)]
struct FieldMsg {
    #[prost(oneof = "FieldKindMsg", tags = "1, 2, 3, 4, 5")]
    kind: Option<FieldKindMsg>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum FieldKindMsg {
    #[prost(message, tag = "1")]
    Ptr(PtrMsg),
    #[prost(message, tag = "2")]
    Null(EmptyMsg),
    #[prost(sint64, tag = "3")]
    I64(i64),
    #[prost(double, tag = "4")]
    F64(f64),
    #[prost(message, tag = "5")]
    F32I32(F32I32Msg),
}

#[derive(Clone, PartialEq, Message)]
struct PtrMsg {
    #[prost(uint64, tag = "1")]
    buffer: u64,
    #[prost(uint64, tag = "2")]
    offset_bytes: u64,
}

#[derive(Clone, PartialEq, Message)]
struct F32I32Msg {
    #[prost(float, tag = "1")]
    f: f32,
    #[prost(sint32, tag = "2")]
    i: i32,
}

#[derive(Clone, PartialEq, Message)]
struct ElementwiseArgMsg {
    #[prost(message, repeated, tag = "1")]
    inputs: Vec<StridedMsg>,
    #[prost(uint64, tag = "2")]
    output: u64,
}

#[derive(Clone, PartialEq, Message)]
struct StridedMsg {
    #[prost(uint64, tag = "1")]
    buffer: u64,
    #[prost(sint64, repeated, tag = "2")]
    strides: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct GemmMsg {
    #[prost(uint64, tag = "1")]
    a: u64,
    #[prost(uint64, tag = "2")]
    b: u64,
    #[prost(uint64, optional, tag = "3")]
    c: Option<u64>,
    #[prost(uint64, tag = "4")]
    d: u64,
    #[prost(uint64, tag = "5")]
    m: u64,
    #[prost(uint64, tag = "6")]
    n: u64,
    #[prost(uint64, tag = "7")]
    k: u64,
    #[prost(uint64, tag = "8")]
    batch: u64,
    #[prost(uint64, repeated, tag = "9")]
    batch_strides: Vec<u64>,
    #[prost(bool, tag = "10")]
    trans_a: bool,
    #[prost(bool, tag = "11")]
    trans_b: bool,
    #[prost(float, tag = "12")]
    alpha: f32,
    #[prost(float, tag = "13")]
    beta: f32,
    #[prost(string, tag = "14")]
    dtype: String,
    #[prost(oneof = "EpilogueMsg", tags = "15, 16, 17, 18, 19, 20")]
    epilogue: Option<EpilogueMsg>,
    /// The element type of C and D where it is not `dtype` (i32 for i8 operands); absent in
    /// the float GEMMs, so their encoding is what it was before integer GEMMs.
    #[prost(string, optional, tag = "21")]
    out_dtype: Option<String>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum EpilogueMsg {
    #[prost(message, tag = "15")]
    None(EmptyMsg),
    #[prost(uint64, tag = "16")]
    Bias(u64),
    #[prost(message, tag = "17")]
    Relu(EmptyMsg),
    #[prost(uint64, tag = "18")]
    ReluBias(u64),
    #[prost(message, tag = "19")]
    Gelu(EmptyMsg),
    #[prost(uint64, tag = "20")]
    GeluBias(u64),
}

#[derive(Clone, PartialEq, Message)]
struct ConvMsg {
    #[prost(uint64, tag = "1")]
    x: u64,
    #[prost(uint64, tag = "2")]
    w: u64,
    #[prost(uint64, optional, tag = "3")]
    bias: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    z: Option<u64>,
    #[prost(uint64, tag = "5")]
    y: u64,
    #[prost(uint64, repeated, tag = "6")]
    x_shape: Vec<u64>,
    #[prost(uint64, repeated, tag = "7")]
    w_shape: Vec<u64>,
    #[prost(uint64, repeated, tag = "8")]
    y_shape: Vec<u64>,
    #[prost(uint64, repeated, tag = "9")]
    pads: Vec<u64>,
    #[prost(uint64, repeated, tag = "10")]
    strides: Vec<u64>,
    #[prost(uint64, repeated, tag = "11")]
    dilations: Vec<u64>,
    #[prost(uint64, tag = "12")]
    groups: u64,
    #[prost(string, tag = "13")]
    dtype: String,
    /// 0: identity, 1: ReLU.
    #[prost(uint32, tag = "14")]
    activation: u32,
    /// NHWC tensors and an OHWI filter.
    #[prost(bool, tag = "15")]
    channels_last: bool,
}

#[derive(Clone, PartialEq, Message)]
struct ErrorFlagMsg {
    #[prost(uint64, tag = "1")]
    buffer: u64,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Clone, PartialEq, Message)]
struct MemoryMsg {
    #[prost(message, repeated, tag = "1")]
    offsets: Vec<OffsetMsg>,
    #[prost(uint64, repeated, tag = "2")]
    sizes: Vec<u64>,
    #[prost(uint64, tag = "3")]
    arena_bytes: u64,
    #[prost(uint64, tag = "4")]
    naive_bytes: u64,
    #[prost(uint64, tag = "5")]
    workspace_offset: u64,
    #[prost(uint64, tag = "6")]
    workspace_bytes: u64,
}

#[derive(Clone, PartialEq, Message)]
struct OffsetMsg {
    #[prost(uint64, optional, tag = "1")]
    offset: Option<u64>,
}

#[derive(Clone, PartialEq, Message)]
struct CubinsMsg {
    #[prost(message, repeated, tag = "1")]
    cubins: Vec<CubinMsg>,
}

#[derive(Clone, PartialEq, Message)]
struct CubinMsg {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    arch: String,
    #[prost(bytes = "vec", tag = "3")]
    image: Vec<u8>,
}

// ---------------------------------------------------------------------------------------
// Plan to mirror.

fn u(x: usize) -> u64 {
    x as u64
}

fn us(v: &[usize]) -> Vec<u64> {
    v.iter().map(|&x| x as u64).collect()
}

/// Appends `bytes` to `weights` at the next 256-aligned offset; returns the offset.
fn push_weight(weights: &mut Vec<u8>, bytes: &[u8]) -> u64 {
    weights.resize(memory::align_up(u(weights.len())) as usize, 0);
    let at = u(weights.len());
    weights.extend_from_slice(bytes);
    at
}

fn encode_buffer(b: &Buffer, weights: &mut Vec<u8>) -> BufferMsg {
    let Buffer { name, dtype, shape, kind, output, last_use } = b;
    let kind = match kind {
        BufferKind::Input(i) => BufferKindMsg::Input(u(*i)),
        BufferKind::Const(t) => {
            // EngineFile::new checked that every constant converts.
            let bytes = tensor_bytes(t).unwrap_or_default();
            let offset = push_weight(weights, &bytes);
            BufferKindMsg::Const(WeightMsg {
                dtype: t.dtype().name().to_string(),
                shape: us(t.shape()),
                offset,
                len: u(bytes.len()),
            })
        }
        BufferKind::Temp => BufferKindMsg::Temp(EmptyMsg {}),
        BufferKind::View(o) => BufferKindMsg::View(u(*o)),
    };
    BufferMsg {
        name: name.clone(),
        dtype: dtype.name().to_string(),
        shape: us(shape),
        output: *output,
        last_use: last_use.map(u),
        kind: Some(kind),
    }
}

fn encode_generated(k: &ElementwiseKernel) -> GeneratedMsg {
    let ElementwiseKernel { name, source, generated, inputs, output, vec } = k;
    GeneratedMsg {
        name: name.clone(),
        source: source.clone(),
        generated: generated.clone(),
        inputs: inputs.iter().map(|d| d.name().to_string()).collect(),
        output: output.name().to_string(),
        vec: u(*vec),
    }
}

fn encode_field(f: &Field) -> FieldMsg {
    let kind = match f {
        Field::Ptr { buffer, offset_bytes } => {
            FieldKindMsg::Ptr(PtrMsg { buffer: u(*buffer), offset_bytes: u(*offset_bytes) })
        }
        Field::Null => FieldKindMsg::Null(EmptyMsg {}),
        Field::I64(v) => FieldKindMsg::I64(*v),
        Field::F64(v) => FieldKindMsg::F64(*v),
        Field::F32I32(f, i) => FieldKindMsg::F32I32(F32I32Msg { f: *f, i: *i }),
    };
    FieldMsg { kind: Some(kind) }
}

fn encode_arg(a: &Arg) -> ArgMsg {
    let kind = match a {
        Arg::Buffer(b) => ArgKindMsg::Buffer(u(*b)),
        Arg::Null => ArgKindMsg::Null(EmptyMsg {}),
        Arg::I64(v) => ArgKindMsg::I64(*v),
        Arg::I32(v) => ArgKindMsg::I32(*v),
        Arg::F32(v) => ArgKindMsg::F32(*v),
        Arg::Struct(fields) => ArgKindMsg::Struct(StructMsg { fields: fields.iter().map(encode_field).collect() }),
        Arg::Elementwise { inputs, output } => ArgKindMsg::Elementwise(ElementwiseArgMsg {
            inputs: inputs.iter().map(|(b, s)| StridedMsg { buffer: u(*b), strides: s.clone() }).collect(),
            output: u(*output),
        }),
    };
    ArgMsg { kind: Some(kind) }
}

fn encode_step(s: &Step) -> StepMsg {
    let Step { node, kind } = s;
    let kind = match kind {
        StepKind::Kernel(k) => {
            let KernelStep { module, kernel, config, args } = k;
            let LaunchConfig { grid, block, shared_bytes } = config;
            let module = match module {
                ModuleRef::Family(f) => ModuleMsg::Family(f.name().to_string()),
                ModuleRef::Generated(g) => ModuleMsg::Generated(u(*g)),
            };
            StepKindMsg::Kernel(KernelMsg {
                module: Some(module),
                kernel: kernel.clone(),
                grid: vec![grid.0, grid.1, grid.2],
                block: vec![block.0, block.1, block.2],
                shared_bytes: *shared_bytes,
                args: args.iter().map(encode_arg).collect(),
            })
        }
        StepKind::Gemm(g) => {
            let GemmStep {
                a,
                b,
                c,
                d,
                m,
                n,
                k,
                batch,
                batch_strides,
                trans_a,
                trans_b,
                alpha,
                beta,
                dtype,
                out_dtype,
                epilogue,
            } = g;
            let epilogue = match epilogue {
                GemmEpilogue::None => EpilogueMsg::None(EmptyMsg {}),
                GemmEpilogue::Bias(b) => EpilogueMsg::Bias(u(*b)),
                GemmEpilogue::Relu => EpilogueMsg::Relu(EmptyMsg {}),
                GemmEpilogue::ReluBias(b) => EpilogueMsg::ReluBias(u(*b)),
                GemmEpilogue::Gelu => EpilogueMsg::Gelu(EmptyMsg {}),
                GemmEpilogue::GeluBias(b) => EpilogueMsg::GeluBias(u(*b)),
            };
            StepKindMsg::Gemm(GemmMsg {
                a: u(*a),
                b: u(*b),
                c: c.map(u),
                d: u(*d),
                m: u(*m),
                n: u(*n),
                k: u(*k),
                batch: u(*batch),
                batch_strides: us(batch_strides),
                trans_a: *trans_a,
                trans_b: *trans_b,
                alpha: *alpha,
                beta: *beta,
                dtype: dtype.name().to_string(),
                epilogue: Some(epilogue),
                out_dtype: (out_dtype != dtype).then(|| out_dtype.name().to_string()),
            })
        }
        StepKind::Conv(c) => {
            let ConvStep {
                x,
                w,
                bias,
                z,
                y,
                x_shape,
                w_shape,
                y_shape,
                pads,
                strides,
                dilations,
                groups,
                dtype,
                activation,
                channels_last,
            } = c;
            StepKindMsg::Conv(ConvMsg {
                x: u(*x),
                w: u(*w),
                bias: bias.map(u),
                z: z.map(u),
                y: u(*y),
                x_shape: us(x_shape),
                w_shape: us(w_shape),
                y_shape: us(y_shape),
                pads: us(pads),
                strides: us(strides),
                dilations: us(dilations),
                groups: u(*groups),
                dtype: dtype.name().to_string(),
                activation: match activation {
                    ConvActivation::Identity => 0,
                    ConvActivation::Relu => 1,
                },
                channels_last: *channels_last,
            })
        }
    };
    StepMsg { node: node.clone(), kind: Some(kind) }
}

fn encode_memory(m: &MemoryPlan) -> MemoryMsg {
    let MemoryPlan { offsets, sizes, arena_bytes, naive_bytes, workspace_offset, workspace_bytes } = m;
    MemoryMsg {
        offsets: offsets.iter().map(|&offset| OffsetMsg { offset }).collect(),
        sizes: sizes.clone(),
        arena_bytes: *arena_bytes,
        naive_bytes: *naive_bytes,
        workspace_offset: *workspace_offset,
        workspace_bytes: *workspace_bytes,
    }
}

/// The plan message and the weights section.
fn encode_plan(plan: &Plan, memory: &MemoryPlan) -> (PlanMsg, Vec<u8>) {
    let Plan { buffers, generated, families, steps, outputs, error_flags } = plan;
    let mut weights = vec![];
    let msg = PlanMsg {
        buffers: buffers.iter().map(|b| encode_buffer(b, &mut weights)).collect(),
        generated: generated.iter().map(encode_generated).collect(),
        families: families.iter().map(|f| f.name().to_string()).collect(),
        steps: steps.iter().map(encode_step).collect(),
        outputs: us(outputs),
        error_flags: error_flags
            .iter()
            .map(|(b, message)| ErrorFlagMsg { buffer: u(*b), message: message.clone() })
            .collect(),
        memory: Some(encode_memory(memory)),
    };
    weights.resize(memory::align_up(u(weights.len())) as usize, 0);
    (msg, weights)
}

// ---------------------------------------------------------------------------------------
// Mirror to plan. Structural decoding only; `validate` checks indices and ranges after.

type Decoded<T> = Result<T, String>;

fn id(x: u64) -> usize {
    // Out-of-range ids stay out of range (and are refused by `validate`) on any target.
    usize::try_from(x).unwrap_or(usize::MAX)
}

fn ids(v: &[u64]) -> Vec<usize> {
    v.iter().map(|&x| id(x)).collect()
}

fn dtype(s: &str, what: &dyn Fn() -> String) -> Decoded<DType> {
    let dt = DType::from_name(s).ok_or_else(|| format!("{}: unknown element type '{s}'", what()))?;
    storage_type(dt).map_err(|_| format!("{}: element type {dt} has no CUDA kernels", what()))?;
    Ok(dt)
}

fn family(s: &str) -> Option<KernelFamily> {
    KernelFamily::ALL.into_iter().find(|f| f.name() == s)
}

fn missing(what: String) -> String {
    format!("{what} is missing")
}

fn decode_buffer(i: usize, m: BufferMsg, weights: &[u8]) -> Decoded<Buffer> {
    let what = || format!("buffer {i}");
    let dt = dtype(&m.dtype, &what)?;
    let kind = match m.kind.ok_or_else(|| missing(format!("buffer {i}: kind")))? {
        BufferKindMsg::Input(k) => BufferKind::Input(id(k)),
        BufferKindMsg::Const(w) => {
            let wdt = dtype(&w.dtype, &what)?;
            let shape = ids(&w.shape);
            let need = shape
                .iter()
                .try_fold(wdt.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| format!("buffer {i}: the weight's shape {:?} overflows", w.shape))?;
            let range = w.offset.checked_add(w.len).filter(|&end| end <= u(weights.len()));
            let Some(end) = range else {
                return Err(format!(
                    "buffer {i}: weight bytes {}+{} lie past the weights section of {} bytes",
                    w.offset,
                    w.len,
                    weights.len()
                ));
            };
            if w.offset % ALIGN != 0 {
                return Err(format!("buffer {i}: weight offset {} is not a multiple of {ALIGN}", w.offset));
            }
            if u(need) != w.len {
                return Err(format!("buffer {i}: the weight's shape needs {need} bytes, it has {}", w.len));
            }
            let t = tensor_from_bytes(wdt, &shape, &weights[w.offset as usize..end as usize])
                .map_err(|e| format!("buffer {i}: {e}"))?;
            BufferKind::Const(t)
        }
        BufferKindMsg::Temp(EmptyMsg {}) => BufferKind::Temp,
        BufferKindMsg::View(o) => BufferKind::View(id(o)),
    };
    Ok(Buffer { name: m.name, dtype: dt, shape: ids(&m.shape), kind, output: m.output, last_use: m.last_use.map(id) })
}

fn decode_generated(i: usize, m: GeneratedMsg) -> Decoded<ElementwiseKernel> {
    let what = || format!("generated kernel {i}");
    Ok(ElementwiseKernel {
        name: m.name,
        source: m.source,
        generated: m.generated,
        inputs: m.inputs.iter().map(|d| dtype(d, &what)).collect::<Decoded<_>>()?,
        output: dtype(&m.output, &what)?,
        vec: id(m.vec),
    })
}

fn decode_arg(s: usize, m: ArgMsg) -> Decoded<Arg> {
    Ok(match m.kind.ok_or_else(|| missing(format!("step {s}: an argument")))? {
        ArgKindMsg::Buffer(b) => Arg::Buffer(id(b)),
        ArgKindMsg::Null(EmptyMsg {}) => Arg::Null,
        ArgKindMsg::I64(v) => Arg::I64(v),
        ArgKindMsg::I32(v) => Arg::I32(v),
        ArgKindMsg::F32(v) => Arg::F32(v),
        ArgKindMsg::Struct(st) => Arg::Struct(
            st.fields
                .into_iter()
                .map(|f| {
                    Ok(match f.kind.ok_or_else(|| missing(format!("step {s}: a struct field")))? {
                        FieldKindMsg::Ptr(p) => Field::Ptr { buffer: id(p.buffer), offset_bytes: id(p.offset_bytes) },
                        FieldKindMsg::Null(EmptyMsg {}) => Field::Null,
                        FieldKindMsg::I64(v) => Field::I64(v),
                        FieldKindMsg::F64(v) => Field::F64(v),
                        FieldKindMsg::F32I32(F32I32Msg { f, i }) => Field::F32I32(f, i),
                    })
                })
                .collect::<Decoded<_>>()?,
        ),
        ArgKindMsg::Elementwise(e) => Arg::Elementwise {
            inputs: e.inputs.into_iter().map(|i| (id(i.buffer), i.strides)).collect(),
            output: id(e.output),
        },
    })
}

fn triple(v: &[u32], what: impl Fn() -> String) -> Decoded<(u32, u32, u32)> {
    match v {
        [x, y, z] => Ok((*x, *y, *z)),
        _ => Err(format!("{}: {} values, expected 3", what(), v.len())),
    }
}

fn decode_step(s: usize, m: StepMsg, families: &[KernelFamily]) -> Decoded<Step> {
    let kind = match m.kind.ok_or_else(|| missing(format!("step {s}: kind")))? {
        StepKindMsg::Kernel(k) => {
            let module = match k.module.ok_or_else(|| missing(format!("step {s}: module")))? {
                ModuleMsg::Family(f) => ModuleRef::Family(
                    family(&f)
                        .filter(|f| families.contains(f))
                        .ok_or_else(|| format!("step {s}: kernel family '{f}' is not one of the plan's"))?,
                ),
                ModuleMsg::Generated(g) => ModuleRef::Generated(id(g)),
            };
            StepKind::Kernel(KernelStep {
                module,
                kernel: k.kernel,
                config: LaunchConfig {
                    grid: triple(&k.grid, || format!("step {s}: grid"))?,
                    block: triple(&k.block, || format!("step {s}: block"))?,
                    shared_bytes: k.shared_bytes,
                },
                args: k.args.into_iter().map(|a| decode_arg(s, a)).collect::<Decoded<_>>()?,
            })
        }
        StepKindMsg::Gemm(g) => {
            let epilogue = match g.epilogue.ok_or_else(|| missing(format!("step {s}: epilogue")))? {
                EpilogueMsg::None(EmptyMsg {}) => GemmEpilogue::None,
                EpilogueMsg::Bias(b) => GemmEpilogue::Bias(id(b)),
                EpilogueMsg::Relu(EmptyMsg {}) => GemmEpilogue::Relu,
                EpilogueMsg::ReluBias(b) => GemmEpilogue::ReluBias(id(b)),
                EpilogueMsg::Gelu(EmptyMsg {}) => GemmEpilogue::Gelu,
                EpilogueMsg::GeluBias(b) => GemmEpilogue::GeluBias(id(b)),
            };
            let batch_strides = match g.batch_strides[..] {
                [a, b, d] => [id(a), id(b), id(d)],
                _ => return Err(format!("step {s}: {} batch strides, expected 3", g.batch_strides.len())),
            };
            let dt = dtype(&g.dtype, &|| format!("step {s}"))?;
            let out_dtype = match &g.out_dtype {
                Some(o) => dtype(o, &|| format!("step {s}: out_dtype"))?,
                None => dt,
            };
            StepKind::Gemm(GemmStep {
                a: id(g.a),
                b: id(g.b),
                c: g.c.map(id),
                d: id(g.d),
                m: id(g.m),
                n: id(g.n),
                k: id(g.k),
                batch: id(g.batch),
                batch_strides,
                trans_a: g.trans_a,
                trans_b: g.trans_b,
                alpha: g.alpha,
                beta: g.beta,
                dtype: dt,
                out_dtype,
                epilogue,
            })
        }
        StepKindMsg::Conv(c) => StepKind::Conv(ConvStep {
            x: id(c.x),
            w: id(c.w),
            bias: c.bias.map(id),
            z: c.z.map(id),
            y: id(c.y),
            x_shape: ids(&c.x_shape),
            w_shape: ids(&c.w_shape),
            y_shape: ids(&c.y_shape),
            pads: ids(&c.pads),
            strides: ids(&c.strides),
            dilations: ids(&c.dilations),
            groups: id(c.groups),
            dtype: dtype(&c.dtype, &|| format!("step {s}"))?,
            activation: match c.activation {
                0 => ConvActivation::Identity,
                1 => ConvActivation::Relu,
                other => return Err(format!("step {s}: unknown convolution activation {other}")),
            },
            channels_last: c.channels_last,
        }),
    };
    Ok(Step { node: m.node, kind })
}

fn decode_plan(m: PlanMsg, weights: &[u8]) -> Decoded<(Plan, MemoryPlan)> {
    let mut families = vec![];
    for f in &m.families {
        families.push(family(f).ok_or_else(|| format!("unknown kernel family '{f}'"))?);
    }
    let plan = Plan {
        buffers: m
            .buffers
            .into_iter()
            .enumerate()
            .map(|(i, b)| decode_buffer(i, b, weights))
            .collect::<Decoded<_>>()?,
        generated: m.generated.into_iter().enumerate().map(|(i, g)| decode_generated(i, g)).collect::<Decoded<_>>()?,
        steps: m.steps.into_iter().enumerate().map(|(s, st)| decode_step(s, st, &families)).collect::<Decoded<_>>()?,
        families,
        outputs: ids(&m.outputs),
        error_flags: m.error_flags.into_iter().map(|f| (id(f.buffer), f.message)).collect(),
    };
    let mm = m.memory.ok_or_else(|| missing("the memory plan".into()))?;
    let memory = MemoryPlan {
        offsets: mm.offsets.into_iter().map(|o| o.offset).collect(),
        sizes: mm.sizes,
        arena_bytes: mm.arena_bytes,
        naive_bytes: mm.naive_bytes,
        workspace_offset: mm.workspace_offset,
        workspace_bytes: mm.workspace_bytes,
    };
    Ok((plan, memory))
}

// ---------------------------------------------------------------------------------------
// Validation: every index in range and every range inside its buffer.

fn elems(plan: &Plan, b: BufferId) -> usize {
    plan.buffers[b].shape.iter().product()
}

/// `base + (count - 1) * stride + extent <= len`, or true when `count` is 0.
fn fits(count: usize, stride: usize, extent: usize, len: usize) -> bool {
    count == 0 || (count - 1).checked_mul(stride).and_then(|x| x.checked_add(extent)).is_some_and(|end| end <= len)
}

/// Checks every buffer id, module reference and range of `plan`, and that `memory` is a sound
/// arena for it, so that the runtime can index without bounds failures.
pub fn validate(plan: &Plan, memory: &MemoryPlan) -> Result<(), String> {
    let n = plan.buffers.len();
    let ok = |b: BufferId, what: &dyn Fn() -> String| -> Result<(), String> {
        if b < n {
            Ok(())
        } else {
            Err(format!("{}: buffer id {b} is out of range ({n} buffers)", what()))
        }
    };
    let steps = plan.steps.len();
    // Sizes first: everything after computes element counts of any buffer.
    for (i, b) in plan.buffers.iter().enumerate() {
        storage_type(b.dtype).map_err(|e| format!("buffer {i}: {e}"))?;
        let bytes =
            memory::buffer_bytes(plan, i).ok_or_else(|| format!("buffer {i}: shape {:?} overflows", b.shape))?;
        usize::try_from(bytes).map_err(|_| format!("buffer {i}: {bytes} bytes do not fit this machine"))?;
    }
    for (i, b) in plan.buffers.iter().enumerate() {
        match &b.kind {
            BufferKind::Input(k) => {
                if *k != i {
                    return Err(format!("buffer {i}: graph input {k} must be buffer {k} (inputs come first)"));
                }
            }
            BufferKind::Const(t) => {
                if t.dtype() != b.dtype || t.len() != elems(plan, i) {
                    return Err(format!(
                        "buffer {i}: constant of {}{:?} in a buffer of {}{:?}",
                        t.dtype(),
                        t.shape(),
                        b.dtype,
                        b.shape
                    ));
                }
            }
            BufferKind::Temp => {}
            BufferKind::View(o) => {
                ok(*o, &|| format!("buffer {i} (a view)"))?;
                let owner = &plan.buffers[*o];
                if matches!(owner.kind, BufferKind::View(_)) {
                    return Err(format!("buffer {i}: a view of buffer {o}, which is a view itself"));
                }
                if owner.dtype != b.dtype || elems(plan, *o) != elems(plan, i) {
                    return Err(format!(
                        "buffer {i}: a view of {}{:?} as {}{:?}",
                        owner.dtype, owner.shape, b.dtype, b.shape
                    ));
                }
            }
        }
        if let Some(s) = b.last_use {
            if s >= steps {
                return Err(format!("buffer {i}: last use at step {s}, the plan has {steps} steps"));
            }
        }
    }
    let mut names = HashSet::new();
    for (g, k) in plan.generated.iter().enumerate() {
        if !names.insert(&k.name) {
            return Err(format!("generated kernel {g}: name '{}' appears twice", k.name));
        }
    }
    let mut families = HashSet::new();
    for f in &plan.families {
        if !families.insert(f) {
            return Err(format!("kernel family '{}' is listed twice", f.name()));
        }
    }
    for (s, step) in plan.steps.iter().enumerate() {
        let what = || format!("step {s} ({})", step.node);
        for b in memory::step_buffers(step) {
            ok(b, &what)?;
        }
        validate_step(plan, s, step).map_err(|e| format!("{}: {e}", what()))?;
    }
    for (o, &b) in plan.outputs.iter().enumerate() {
        ok(b, &|| format!("output {o}"))?;
    }
    for (f, (b, _)) in plan.error_flags.iter().enumerate() {
        ok(*b, &|| format!("error flag {f}"))?;
        if plan.buffers[*b].dtype != DType::I32 || elems(plan, *b) == 0 {
            return Err(format!("error flag {f}: buffer {b} is not an i32 flag"));
        }
    }
    memory::verify(plan, memory).map_err(|e| format!("memory plan: {e}"))
}

/// The step-specific checks, once every buffer id of the step is known to be in range.
fn validate_step(plan: &Plan, _s: usize, step: &Step) -> Result<(), String> {
    let bytes = |b: BufferId| elems(plan, b) * plan.buffers[b].dtype.size();
    match &step.kind {
        StepKind::Kernel(k) => {
            if let ModuleRef::Generated(g) = k.module {
                if g >= plan.generated.len() {
                    return Err(format!("generated kernel {g} is out of range ({})", plan.generated.len()));
                }
            }
            for a in &k.args {
                match a {
                    Arg::Buffer(_) | Arg::Null | Arg::I64(_) | Arg::I32(_) | Arg::F32(_) => {}
                    Arg::Struct(fields) => {
                        for f in fields {
                            match f {
                                Field::Ptr { buffer, offset_bytes } => {
                                    if *offset_bytes > bytes(*buffer) {
                                        return Err(format!(
                                            "pointer {offset_bytes} bytes into buffer {buffer} of {} bytes",
                                            bytes(*buffer)
                                        ));
                                    }
                                }
                                Field::Null | Field::I64(_) | Field::F64(_) | Field::F32I32(..) => {}
                            }
                        }
                    }
                    Arg::Elementwise { inputs, output } => {
                        let ModuleRef::Generated(g) = k.module else {
                            return Err("elementwise arguments for a family kernel".into());
                        };
                        let kernel = &plan.generated[g];
                        if kernel.inputs.len() != inputs.len() {
                            return Err(format!("{} inputs to a kernel of {}", inputs.len(), kernel.inputs.len()));
                        }
                        let shape = &plan.buffers[*output].shape;
                        let out_elems = elems(plan, *output);
                        if plan.buffers[*output].dtype != kernel.output {
                            return Err(format!(
                                "output buffer {output} is {}, the kernel writes {}",
                                plan.buffers[*output].dtype, kernel.output
                            ));
                        }
                        for ((b, strides), &dt) in inputs.iter().zip(&kernel.inputs) {
                            if plan.buffers[*b].dtype != dt {
                                return Err(format!("buffer {b} is {}, the kernel reads {dt}", plan.buffers[*b].dtype));
                            }
                            if strides.len() != shape.len() {
                                return Err(format!("buffer {b}: {} strides for rank {}", strides.len(), shape.len()));
                            }
                            // The last element read, at the output's last index.
                            let mut last = 0i128;
                            for (&d, &st) in shape.iter().zip(strides) {
                                if st < 0 {
                                    return Err(format!("buffer {b}: negative stride {st}"));
                                }
                                last = last.saturating_add((d.saturating_sub(1) as i128) * st as i128);
                            }
                            if out_elems > 0 && last >= elems(plan, *b) as i128 {
                                return Err(format!(
                                    "buffer {b} of {} elements read at element {last}",
                                    elems(plan, *b)
                                ));
                            }
                        }
                    }
                }
            }
        }
        StepKind::Gemm(g) => {
            let float = matches!(g.dtype, DType::F32 | DType::F16 | DType::BF16) && g.out_dtype == g.dtype;
            if !float && (g.dtype, g.out_dtype) != (DType::I8, DType::I32) {
                return Err(format!("a GEMM of {} into {}", g.dtype, g.out_dtype));
            }
            let mut operands = vec![(g.a, g.dtype), (g.b, g.dtype), (g.d, g.out_dtype)];
            operands.extend(g.c.map(|c| (c, g.out_dtype)));
            for (b, want) in operands {
                if plan.buffers[b].dtype != want {
                    return Err(format!("buffer {b} is {}, the GEMM takes {want} there", plan.buffers[b].dtype));
                }
            }
            let mk = g.m.checked_mul(g.k);
            let kn = g.k.checked_mul(g.n);
            let mn = g.m.checked_mul(g.n);
            let (Some(mk), Some(kn), Some(mn)) = (mk, kn, mn) else {
                return Err(format!("m, n, k of {} x {} x {} overflow", g.m, g.n, g.k));
            };
            let [sa, sb, sd] = g.batch_strides;
            for (name, b, stride, extent) in [("A", g.a, sa, mk), ("B", g.b, sb, kn), ("D", g.d, sd, mn)] {
                if !fits(g.batch, stride, extent, elems(plan, b)) {
                    return Err(format!(
                        "{name} (buffer {b}) of {} elements is too small for {} batches of {extent} every {stride}",
                        elems(plan, b),
                        g.batch
                    ));
                }
            }
            if let Some(c) = g.c {
                if elems(plan, c) != elems(plan, g.d) {
                    return Err(format!("C (buffer {c}) is not the size of D (buffer {})", g.d));
                }
            }
            match g.epilogue {
                GemmEpilogue::None | GemmEpilogue::Relu | GemmEpilogue::Gelu => {}
                GemmEpilogue::Bias(b) | GemmEpilogue::ReluBias(b) | GemmEpilogue::GeluBias(b) => {
                    if elems(plan, b) < g.n {
                        return Err(format!("bias (buffer {b}) has fewer than n = {} elements", g.n));
                    }
                }
            }
        }
        StepKind::Conv(c) => {
            let rank = c.x_shape.len();
            if rank < 3 || c.w_shape.len() != rank || c.y_shape.len() != rank {
                return Err(format!(
                    "ranks of x {:?}, w {:?}, y {:?} differ or are under 3",
                    c.x_shape, c.w_shape, c.y_shape
                ));
            }
            for (what, v) in [("pads", &c.pads), ("strides", &c.strides), ("dilations", &c.dilations)] {
                if v.len() != rank - 2 {
                    return Err(format!("{} {what} for {} spatial dims", v.len(), rank - 2));
                }
            }
            for (what, b, shape) in [("x", c.x, &c.x_shape), ("w", c.w, &c.w_shape), ("y", c.y, &c.y_shape)] {
                if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(elems(plan, b)) {
                    return Err(format!("{what} {shape:?} does not match buffer {b} of {} elements", elems(plan, b)));
                }
            }
            if c.groups == 0 || c.x_shape[1] % c.groups != 0 || c.w_shape[0] % c.groups != 0 {
                return Err(format!("{} groups for {} channels", c.groups, c.x_shape[1]));
            }
            if let Some(b) = c.bias {
                if elems(plan, b) != c.y_shape[1] {
                    return Err(format!("bias (buffer {b}) is not one per output channel"));
                }
            }
            if let Some(z) = c.z {
                if elems(plan, z) != elems(plan, c.y) {
                    return Err(format!("z (buffer {z}) is not the size of y"));
                }
            }
            let mut operands = vec![c.x, c.w, c.y];
            operands.extend(c.bias);
            operands.extend(c.z);
            for b in operands {
                if plan.buffers[b].dtype != c.dtype {
                    return Err(format!("buffer {b} is {}, the convolution is {}", plan.buffers[b].dtype, c.dtype));
                }
            }
        }
    }
    Ok(())
}

/// The names of the modules a plan needs CUBINs for: each family it launches from (but the
/// elementwise template, whose kernels are the generated ones), then each generated kernel.
pub fn module_names(plan: &Plan) -> Vec<String> {
    let mut names: Vec<String> =
        plan.families.iter().filter(|&&f| f != KernelFamily::Elementwise).map(|f| f.name().to_string()).collect();
    names.extend(plan.generated.iter().map(|k| k.name.clone()));
    names
}

fn validate_cubins(header: &EngineHeader, plan: &Plan, cubins: &[CubinEntry]) -> Result<(), String> {
    let mut have = HashSet::new();
    for (i, c) in cubins.iter().enumerate() {
        if c.arch != header.arch {
            return Err(format!("CUBIN {i} ({}) is for {}, the engine for {}", c.name, c.arch, header.arch));
        }
        if !have.insert(c.name.as_str()) {
            return Err(format!("CUBIN {i}: '{}' appears twice", c.name));
        }
    }
    for name in module_names(plan) {
        if !have.contains(name.as_str()) {
            return Err(format!("no CUBIN for module '{name}'"));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_u64(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(b)
}

impl EngineFile {
    /// An engine of these parts, checked as the reader checks a file: every index and range
    /// of the plan, the memory plan against it, a CUBIN of the header's architecture for
    /// every module, and every constant of an element type the GPU kernels take.
    pub fn new(
        header: EngineHeader,
        plan: Plan,
        memory: MemoryPlan,
        cubins: Vec<CubinEntry>,
    ) -> Result<EngineFile, EngineError> {
        validate(&plan, &memory).map_err(EngineError::Invalid)?;
        validate_cubins(&header, &plan, &cubins).map_err(EngineError::Invalid)?;
        for (i, b) in plan.buffers.iter().enumerate() {
            if let BufferKind::Const(t) = &b.kind {
                tensor_bytes(t).map_err(|e| EngineError::Invalid(format!("buffer {i}: {e}")))?;
            }
        }
        Ok(EngineFile { header, plan, memory, cubins })
    }

    /// What the engine was built with and for.
    pub fn header(&self) -> &EngineHeader {
        &self.header
    }

    /// The launch plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The activation memory plan.
    pub fn memory(&self) -> &MemoryPlan {
        &self.memory
    }

    /// The compiled modules, one per name of [`module_names`].
    pub fn cubins(&self) -> &[CubinEntry] {
        &self.cubins
    }

    /// The parts, to run.
    pub fn into_parts(self) -> (EngineHeader, Plan, MemoryPlan, Vec<CubinEntry>) {
        (self.header, self.plan, self.memory, self.cubins)
    }

    /// The engine file's bytes; the same engine always gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_unchecked(&self.header, &self.plan, &self.memory, &self.cubins)
    }

    /// Reads an engine file, checking everything listed in the module documentation. Never
    /// panics and never allocates more than a small multiple of `data.len()`.
    pub fn from_bytes(data: &[u8]) -> Result<EngineFile, EngineError> {
        let found = u(data.len());
        let head = &data[..data.len().min(MAGIC.len())];
        if head != &MAGIC[..head.len()] {
            return Err(EngineError::NotEngine);
        }
        if data.len() < MAGIC.len() + 4 {
            return Err(EngineError::Truncated { expected: u(FIXED_BYTES), found });
        }
        let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        if version != FORMAT_VERSION {
            return Err(EngineError::Version { found: version });
        }
        if data.len() < FIXED_BYTES {
            return Err(EngineError::Truncated { expected: u(FIXED_BYTES), found });
        }
        let [h, p, w, c] = [12, 20, 28, 36].map(|at| read_u64(data, at));
        let lengths = || EngineError::Corrupt(format!("section lengths {h}, {p}, {w}, {c} overflow"));
        let weights_at = u(FIXED_BYTES).checked_add(h).and_then(|x| x.checked_add(p)).ok_or_else(lengths)?;
        let weights_at = weights_at.checked_next_multiple_of(ALIGN).ok_or_else(lengths)?;
        let cubins_at = weights_at.checked_add(w).ok_or_else(lengths)?;
        let sum_at = cubins_at.checked_add(c).ok_or_else(lengths)?;
        let expected = sum_at.checked_add(u(CHECKSUM_BYTES)).ok_or_else(lengths)?;
        if expected > found {
            return Err(EngineError::Truncated { expected, found });
        }
        if expected < found {
            return Err(EngineError::Corrupt(format!(
                "{} bytes after the checksum (the sections end at byte {expected})",
                found - expected
            )));
        }
        // Every offset is now at most data.len(), so the casts and slices below are in range.
        let (body, stored) = data.split_at(sum_at as usize);
        let computed = Sha256::digest(body);
        if computed.as_slice() != stored {
            return Err(EngineError::Checksum { stored: hex(stored), computed: hex(&computed) });
        }
        let header_at = FIXED_BYTES;
        let plan_at = header_at + h as usize;
        let header = HeaderMsg::decode(&data[header_at..plan_at])
            .map_err(|e| EngineError::Corrupt(format!("the header does not decode: {e}")))?;
        let plan = PlanMsg::decode(&data[plan_at..plan_at + p as usize])
            .map_err(|e| EngineError::Corrupt(format!("the plan does not decode: {e}")))?;
        let weights = &data[weights_at as usize..cubins_at as usize];
        let cubins = CubinsMsg::decode(&data[cubins_at as usize..sum_at as usize])
            .map_err(|e| EngineError::Corrupt(format!("the CUBIN section does not decode: {e}")))?;

        let header = EngineHeader {
            kiln_version: header.kiln_version,
            arch: header.arch,
            nvrtc_version: header.nvrtc_version,
            cuda_version: header.cuda_version,
            options: header.options.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            description: header.description,
        };
        let (plan, memory) = decode_plan(plan, weights).map_err(EngineError::Corrupt)?;
        let cubins: Vec<CubinEntry> =
            cubins.cubins.into_iter().map(|c| CubinEntry { name: c.name, arch: c.arch, image: c.image }).collect();
        validate(&plan, &memory).map_err(EngineError::Corrupt)?;
        validate_cubins(&header, &plan, &cubins).map_err(EngineError::Corrupt)?;
        Ok(EngineFile { header, plan, memory, cubins })
    }

    /// Refuses to run on a GPU of another architecture than the engine's CUBINs.
    pub fn check_arch(&self, gpu_arch: &str) -> Result<(), EngineError> {
        if self.header.arch == gpu_arch {
            Ok(())
        } else {
            Err(EngineError::Arch { engine: self.header.arch.clone(), gpu: gpu_arch.to_string() })
        }
    }
}

/// Writes an engine file of these parts without checking them, as [`EngineFile::to_bytes`]
/// does for checked parts. For tests and fuzz seeds that need a well-checksummed file with a
/// wrong plan in it: the reader must refuse whatever is wrong. A constant of an element type
/// the GPU kernels do not take is written with no bytes.
pub fn encode_unchecked(header: &EngineHeader, plan: &Plan, memory: &MemoryPlan, cubins: &[CubinEntry]) -> Vec<u8> {
    let EngineHeader { kiln_version, arch, nvrtc_version, cuda_version, options, description } = header;
    let header = HeaderMsg {
        kiln_version: kiln_version.clone(),
        arch: arch.clone(),
        nvrtc_version: nvrtc_version.clone(),
        cuda_version: cuda_version.clone(),
        options: options.iter().map(|(key, value)| KeyValueMsg { key: key.clone(), value: value.clone() }).collect(),
        description: description.clone(),
    }
    .encode_to_vec();
    let (plan, weights) = encode_plan(plan, memory);
    let plan = plan.encode_to_vec();
    let cubins = CubinsMsg {
        cubins: cubins
            .iter()
            .map(|CubinEntry { name, arch, image }| CubinMsg {
                name: name.clone(),
                arch: arch.clone(),
                image: image.clone(),
            })
            .collect(),
    }
    .encode_to_vec();

    let mut out = Vec::with_capacity(FIXED_BYTES + header.len() + plan.len() + 256 + weights.len() + cubins.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for len in [header.len(), plan.len(), weights.len(), cubins.len()] {
        out.extend_from_slice(&u(len).to_le_bytes());
    }
    out.extend_from_slice(&header);
    out.extend_from_slice(&plan);
    out.resize(memory::align_up(u(out.len())) as usize, 0);
    out.extend_from_slice(&weights);
    out.extend_from_slice(&cubins);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Builds an engine for `arch` (such as `sm_90`): compiles every kernel family of the plan and
/// every generated kernel with NVRTC, and plans the arena. The option `workspace_bytes` sets
/// the cuBLASLt/cuDNN workspace ([`DEFAULT_WORKSPACE_BYTES`] otherwise); every option is
/// recorded in the header.
pub fn build_engine(
    plan: Plan,
    arch: &str,
    nvrtc: &Nvrtc,
    options: Vec<(String, String)>,
) -> Result<EngineFile, EngineError> {
    let workspace = match options.iter().find(|(k, _)| k == "workspace_bytes") {
        Some((_, v)) => v
            .parse::<usize>()
            .map_err(|_| EngineError::Invalid(format!("option workspace_bytes = '{v}' is not a byte count")))?,
        None => DEFAULT_WORKSPACE_BYTES,
    };
    let mut cubins = vec![];
    for f in plan.families.iter().filter(|&&f| f != KernelFamily::Elementwise) {
        let cubin = nvrtc.compile(f.name(), &f.source(), arch)?;
        cubins.push(CubinEntry { name: f.name().to_string(), arch: arch.to_string(), image: cubin.image });
    }
    for k in &plan.generated {
        let cubin = nvrtc.compile(&k.name, &k.source, arch)?;
        cubins.push(CubinEntry { name: k.name.clone(), arch: arch.to_string(), image: cubin.image });
    }
    let memory = memory::plan_memory(&plan, workspace);
    let (major, minor) = nvrtc.version();
    let header = EngineHeader {
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        arch: arch.to_string(),
        nvrtc_version: format!("{major}.{minor}"),
        cuda_version: CUDA_VERSION.to_string(),
        options,
        description: format!(
            "{} buffers, {} steps, {} kernel modules, arena {} bytes",
            plan.buffers.len(),
            plan.steps.len(),
            cubins.len(),
            memory.arena_bytes
        ),
    };
    EngineFile::new(header, plan, memory, cubins)
}
