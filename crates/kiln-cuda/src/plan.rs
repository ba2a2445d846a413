//! The launch plan: an optimized graph as an ordered list of kernel launches and library calls,
//! each with its buffers, launch configuration and parameters. The runtime serializes and runs
//! it; nothing here touches a GPU.
//!
//! This planner covers graphs of elementwise ops, fused elementwise expressions, MatMul
//! and Gemm (through cuBLASLt, with the matrix-op epilogues of fusion), LayerNorm, RMSNorm,
//! Softmax, reductions over neighbouring axes, ArgMax/ArgMin, Transpose, Concat, Gather,
//! packed attention, and the reshapes that only rename memory (views, no step); its submodules
//! add convolutions through cuDNN (`conv`), channels-last execution of FP16 convolution
//! networks (`channels_last`), pooling (`pool`), the data-movement ops Slice, Expand, Tile,
//! Split, Pad and Resize (`data`), the indexing ops and losses (`index`), quantization
//! (`quant`, `qlinear`), and ONNX Attention and RotaryEmbedding (`attention`). Any other node
//! fails the plan with one error
//! naming every such node: nothing falls back to the CPU. Shapes must be static.
//!
//! An epilogue that cuBLASLt can fuse (bias, ReLU, tanh-GELU, and their bias forms) becomes a
//! field of the GEMM call; any other epilogue is a generated kernel launched after the GEMM on
//! its accumulator.

use crate::codegen::{broadcast_strides, elementwise_kernel, epilogue_kernel, ElementwiseKernel};
use crate::driver::{LaunchConfig, Param};
use crate::error::{CudaError, Result};
use crate::kernels::KernelFamily;
use crate::launch;
use kiln_ir::ops::attention::AttentionAttrs;
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp};
use kiln_ir::ops::reduce::Reducer;
use kiln_ir::ops::{
    AttentionOp, ElementwiseOp, Expr, ExprNode, FusedOp, LayoutOp, LinalgOp, NormOp, ReduceOp, SpatialOp,
};
use kiln_ir::{DType, Graph, NodeId, Op, Tensor, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write};

mod attention;
mod channels_last;
mod conv;
mod data;
mod igemm;
mod index;
mod legacy;
mod norm;
mod pool;
mod qlinear;
mod quant;
mod resize;
mod spatial;

/// Index of a buffer in [`Plan::buffers`].
pub type BufferId = usize;

/// Where a buffer's contents come from.
#[derive(Clone, Debug, PartialEq)]
pub enum BufferKind {
    /// Graph input `i`.
    Input(usize),
    /// A constant, uploaded once.
    Const(Tensor),
    /// Written by a step.
    Temp,
    /// The same memory as another buffer under another shape (Reshape, Flatten, Squeeze,
    /// Unsqueeze, Identity, inference Dropout): no step, no allocation.
    View(BufferId),
}

/// One device buffer of the plan: one value of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// The value's name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Static shape.
    pub shape: Vec<usize>,
    /// Where its contents come from.
    pub kind: BufferKind,
    /// Whether it is a graph output, or the memory of one (the owner of an output view): the
    /// runtime never frees or reuses it.
    pub output: bool,
    /// The last step that reads it or any view of it (`None` if no step does), for the runtime
    /// to free or reuse its memory after.
    pub last_use: Option<usize>,
}

/// The kernel module a launch comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModuleRef {
    /// A kernel family, compiled whole.
    Family(KernelFamily),
    /// A generated kernel (index into [`Plan::generated`]).
    Generated(usize),
}

/// One kernel parameter, resolved by the runtime into bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// A buffer's device address.
    Buffer(BufferId),
    /// A null pointer (an absent optional tensor).
    Null,
    /// A 64-bit integer.
    I64(i64),
    /// A 32-bit integer.
    I32(i32),
    /// A float.
    F32(f32),
    /// A struct passed by value, field by field in declaration order (the C structs of the
    /// kernel families: `Strided`, `AttnArgs`, ...).
    Struct(Vec<Field>),
    /// The `ElemArgs` struct of a generated elementwise kernel: each input with its strides
    /// over the output shape, and the output (see [`crate::codegen::elementwise_args`]).
    Elementwise {
        /// Inputs with their broadcast strides.
        inputs: Vec<(BufferId, Vec<i64>)>,
        /// The output buffer.
        output: BufferId,
    },
}

/// One field of an [`Arg::Struct`].
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// A buffer's device address plus a byte offset.
    Ptr {
        /// The buffer.
        buffer: BufferId,
        /// Bytes past its start.
        offset_bytes: usize,
    },
    /// A null pointer.
    Null,
    /// A 64-bit integer.
    I64(i64),
    /// A 64-bit float.
    F64(f64),
    /// A 32-bit float followed by a 32-bit integer (the tail of `AttnArgs`).
    F32I32(f32, i32),
}

/// A kernel launch.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelStep {
    /// The kernel's module.
    pub module: ModuleRef,
    /// The kernel's name in it.
    pub kernel: String,
    /// Grid, block and shared memory.
    pub config: LaunchConfig,
    /// Its parameters, in order.
    pub args: Vec<Arg>,
}

/// What cuBLASLt applies to the product before writing it (`CUBLASLT_EPILOGUE_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GemmEpilogue {
    /// Nothing.
    None,
    /// `+ bias[n]`.
    Bias(BufferId),
    /// `relu(x)`.
    Relu,
    /// `relu(x + bias[n])`.
    ReluBias(BufferId),
    /// `gelu_tanh(x)`.
    Gelu,
    /// `gelu_tanh(x + bias[n])`.
    GeluBias(BufferId),
}

/// A (strided batched) matrix product through cuBLASLt, in row-major terms:
/// `D[b] = alpha * op(A[b]) op(B[b]) + beta * C[b]`, then the epilogue. The runtime maps it to
/// cuBLASLt's column-major convention by computing `D^T = op(B)^T op(A)^T`.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmStep {
    /// A, B, optional C and D.
    pub a: BufferId,
    /// B.
    pub b: BufferId,
    /// C, read with `beta` (same shape as D).
    pub c: Option<BufferId>,
    /// D.
    pub d: BufferId,
    /// Rows of D.
    pub m: usize,
    /// Columns of D.
    pub n: usize,
    /// The shared dim.
    pub k: usize,
    /// Batch count.
    pub batch: usize,
    /// Elements between batches of A, B and D (0: the same matrix for every batch).
    pub batch_strides: [usize; 3],
    /// Whether A is stored `[k, m]`.
    pub trans_a: bool,
    /// Whether B is stored `[n, k]`.
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C.
    pub beta: f32,
    /// Element type of A and B.
    pub dtype: DType,
    /// Element type of C and D: `dtype` for the float GEMMs, which accumulate in f32; i32 for
    /// i8 operands, which accumulate exactly in i32 on the integer tensor cores (IMMA; no
    /// epilogue, alpha 1, beta 0, and B stored `[n, k]`: see [`crate::blas`]).
    pub out_dtype: DType,
    /// The fused epilogue.
    pub epilogue: GemmEpilogue,
}

/// The activation cuDNN applies after a convolution (`cudnnConvolutionBiasActivationForward`
/// fuses only these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvActivation {
    /// None.
    Identity,
    /// `max(x, 0)`.
    Relu,
}

/// A convolution through cuDNN, NCHW (or NCDHW, NCW), cross-correlation as ONNX defines it:
/// `y = act(conv(x, w) + bias[k] + z)`, with `bias` and `z` optional. cuDNN pads symmetrically,
/// so the planner pads asymmetric inputs with a kernel first.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvStep {
    /// Input, `[n, c, spatial...]`.
    pub x: BufferId,
    /// Filter, `[k, c / groups, kernel...]`.
    pub w: BufferId,
    /// Bias of `k` elements, added per output channel.
    pub bias: Option<BufferId>,
    /// A residual of the output's shape, added before the activation.
    pub z: Option<BufferId>,
    /// Output, `[n, k, spatial...]`.
    pub y: BufferId,
    /// The input's shape.
    pub x_shape: Vec<usize>,
    /// The filter's shape.
    pub w_shape: Vec<usize>,
    /// The output's shape.
    pub y_shape: Vec<usize>,
    /// Padding on both sides of each spatial dim.
    pub pads: Vec<usize>,
    /// Stride of each spatial dim.
    pub strides: Vec<usize>,
    /// Dilation of each spatial dim.
    pub dilations: Vec<usize>,
    /// Groups (`c` for a depthwise convolution).
    pub groups: usize,
    /// Element type of x, w, bias, z and y; accumulation is f32.
    pub dtype: DType,
    /// The fused activation.
    pub activation: ConvActivation,
    /// x, z and y are stored NHWC and w as `[k, kernel..., c / groups]` (OHWI); the shapes
    /// above stay in ONNX's order.
    pub channels_last: bool,
}

/// What one step does.
#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    /// A kernel launch.
    Kernel(KernelStep),
    /// A cuBLASLt matmul.
    Gemm(GemmStep),
    /// A cuDNN convolution.
    Conv(ConvStep),
}

/// One step of the plan, for one graph node (a node may take two: GEMM then epilogue).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The node's name.
    pub node: String,
    /// What to do.
    pub kind: StepKind,
}

/// The launch plan of a graph.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Plan {
    /// Every buffer, inputs first in signature order.
    pub buffers: Vec<Buffer>,
    /// Generated kernels, to compile for the target.
    pub generated: Vec<ElementwiseKernel>,
    /// The kernel families the plan launches from, to compile for the target.
    pub families: Vec<KernelFamily>,
    /// The steps, in execution order.
    pub steps: Vec<Step>,
    /// The graph outputs' buffers, in signature order.
    pub outputs: Vec<BufferId>,
    /// Flags kernels raise on bad data (a Gather index out of range): i32 buffers that start
    /// at zero and must be zero after the run, else the run fails with the message.
    pub error_flags: Vec<(BufferId, String)>,
}

impl Plan {
    /// The bytes of one kernel parameter of `step`, with `addr` giving each buffer's device
    /// address (a view resolves to its owner here, so `addr` sees owners only).
    pub fn param(&self, step: &KernelStep, arg: &Arg, addr: &dyn Fn(BufferId) -> u64) -> Result<Param> {
        let at = |b: BufferId| -> Result<u64> {
            let buf = self.buffers.get(b).ok_or_else(|| CudaError::Invalid(format!("no buffer %{b}")))?;
            Ok(match buf.kind {
                BufferKind::View(owner) => addr(owner),
                _ => addr(b),
            })
        };
        Ok(match arg {
            Arg::Buffer(b) => Param::ptr(at(*b)?),
            Arg::Null => Param::ptr(0),
            Arg::I64(v) => Param::i64(*v),
            Arg::I32(v) => Param::i32(*v),
            Arg::F32(v) => Param::f32(*v),
            Arg::Struct(fields) => {
                let mut bytes = vec![];
                for f in fields {
                    match f {
                        Field::Ptr { buffer, offset_bytes } => {
                            bytes.extend((at(*buffer)? + *offset_bytes as u64).to_ne_bytes())
                        }
                        Field::Null => bytes.extend(0u64.to_ne_bytes()),
                        Field::I64(v) => bytes.extend(v.to_ne_bytes()),
                        Field::F64(v) => bytes.extend(v.to_ne_bytes()),
                        Field::F32I32(a, b) => {
                            bytes.extend(a.to_ne_bytes());
                            bytes.extend(b.to_ne_bytes());
                        }
                    }
                }
                Param(bytes)
            }
            Arg::Elementwise { inputs, output } => {
                let ModuleRef::Generated(g) = step.module else {
                    return Err(CudaError::Invalid(format!(
                        "{}: elementwise arguments for a family kernel",
                        step.kernel
                    )));
                };
                let k = self.generated.get(g).ok_or_else(|| CudaError::Invalid(format!("no generated kernel {g}")))?;
                let ptrs: Vec<u64> = inputs.iter().map(|(b, _)| at(*b)).collect::<Result<_>>()?;
                let strides: Vec<Vec<i64>> = inputs.iter().map(|(_, s)| s.clone()).collect();
                let shape = &self.buffers[*output].shape;
                Param(crate::codegen::elementwise_args(k, &ptrs, at(*output)?, shape, &strides)?)
            }
        })
    }
}

struct Planner<'g> {
    g: &'g Graph,
    plan: Plan,
    /// The buffer of each value in its ONNX layout.
    values: HashMap<Value, BufferId>,
    /// The channels-last buffer of each value kept NHWC (see [`channels_last`]).
    nhwc: HashMap<Value, BufferId>,
    /// Whether f32 2-D convolutions run channels-last too: in an FP16 network, whose first
    /// layers the FP16 policy keeps in f32 (see [`channels_last`]).
    nhwc_f32: bool,
    /// Nodes another node's step computes already (a quantize a LayerNorm writes too).
    absorbed: HashSet<NodeId>,
    /// What the GPU the plan is for can do.
    target: Target,
}

/// What the GPU a plan is for can do, where the plan takes kernels that need it, and the
/// choices that depend on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// An INT8 matrix product computes the LayerNorm that alone reads it in its epilogue, its
    /// channel blocks one cluster of Hopper's sm_90a (see `codegen::IgemmBlock::ln`). Off by
    /// default: on an H100 it measured slower than the LayerNorm kernel after the product
    /// (docs/int8.md). [`Target::for_arch`] turns it on for sm_90 with `KILN_IGEMM_LN=1`.
    pub layernorm_epilogue: bool,
}

impl Target {
    /// The target of an engine compiled for `arch` (`sm_80`, `sm_90`, ...), with the choices
    /// the environment makes at build time (see the fields).
    pub fn for_arch(arch: &str) -> Target {
        let hopper = matches!(arch, "sm_90" | "sm_90a");
        Target { layernorm_epilogue: hopper && std::env::var("KILN_IGEMM_LN").is_ok_and(|v| v == "1") }
    }
}

/// Plans `g` for any GPU Kiln supports (no kernel that needs a [`Target`]), or fails naming
/// every node that has no GPU lowering.
pub fn plan(g: &Graph) -> Result<Plan> {
    plan_for(g, Target::default())
}

/// Plans `g` for `target`, or fails naming every node that has no GPU lowering.
pub fn plan_for(g: &Graph, target: Target) -> Result<Plan> {
    let order = g.topo_order().map_err(|e| CudaError::Invalid(e.to_string()))?;
    let nhwc_f32 = channels_last::half_convolutions(g);
    let mut p = Planner {
        g,
        plan: Plan::default(),
        values: HashMap::new(),
        nhwc: HashMap::new(),
        nhwc_f32,
        absorbed: HashSet::new(),
        target,
    };
    for (i, &id) in g.inputs.iter().enumerate() {
        p.buffer(Value { node: id, slot: 0 }, BufferKind::Input(i))?;
    }
    let mut unsupported = vec![];
    for id in order {
        if p.absorbed.contains(&id) {
            continue;
        }
        let node = g.node(id);
        match p.node(id) {
            Ok(()) => {}
            Err(CudaError::Unsupported(why)) => unsupported.push(format!("{} ({}): {why}", node.name, node.op.name())),
            Err(e) => return Err(CudaError::Invalid(format!("node {} ({}): {e}", node.name, node.op.name()))),
        }
    }
    if !unsupported.is_empty() {
        return Err(CudaError::Unsupported(format!(
            "{} node(s) have no CUDA lowering: {}",
            unsupported.len(),
            unsupported.join("; ")
        )));
    }
    for o in &g.outputs {
        p.materialize(o.value)?;
        let b = *p
            .values
            .get(&o.value)
            .ok_or_else(|| CudaError::Invalid(format!("graph output {} is not computed by the plan", o.name)))?;
        p.plan.buffers[b].output = true;
        if let BufferKind::View(owner) = p.plan.buffers[b].kind {
            p.plan.buffers[owner].output = true;
        }
        p.plan.outputs.push(b);
    }
    // Last uses, for the runtime's memory reuse; reading a view reads its owner's memory.
    for (s, step) in p.plan.steps.iter().enumerate() {
        for b in reads(step) {
            p.plan.buffers[b].last_use = Some(s);
            if let BufferKind::View(owner) = p.plan.buffers[b].kind {
                p.plan.buffers[owner].last_use = Some(s);
            }
        }
    }
    Ok(p.plan)
}

/// The scale `c` of `Cast<i8>(Clip<-128,127>(Round(x / c)))` over input 0, where `x` is the
/// input or the input cast to f32.
fn quantize_scale(e: &Expr) -> Option<f32> {
    let (DType::I8, div) = crate::codegen::quantize_tail(e, e.nodes.len().checked_sub(1)?)? else { return None };
    let ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Div), args } = &e.nodes[div] else { return None };
    let &[x, c] = &args[..] else { return None };
    let ExprNode::Scalar { value, dtype: DType::F32 } = e.nodes[c] else { return None };
    let input = match &e.nodes[x] {
        ExprNode::Input(0) => true,
        ExprNode::Op { op: ElementwiseOp::Cast { to: DType::F32, .. }, args } => {
            matches!(args[..], [a] if matches!(e.nodes[a], ExprNode::Input(0)))
        }
        _ => false,
    };
    input.then_some(value as f32)
}

/// The buffers a step reads.
fn reads(step: &Step) -> Vec<BufferId> {
    match &step.kind {
        StepKind::Gemm(g) => {
            let mut r = vec![g.a, g.b];
            r.extend(g.c);
            if let GemmEpilogue::Bias(b) | GemmEpilogue::ReluBias(b) | GemmEpilogue::GeluBias(b) = g.epilogue {
                r.push(b);
            }
            r
        }
        StepKind::Conv(c) => [Some(c.x), Some(c.w), c.bias, c.z].into_iter().flatten().collect(),
        StepKind::Kernel(k) => k
            .args
            .iter()
            .flat_map(|a| match a {
                Arg::Buffer(b) => vec![*b],
                Arg::Elementwise { inputs, .. } => inputs.iter().map(|(b, _)| *b).collect(),
                Arg::Struct(fields) => fields
                    .iter()
                    .filter_map(|f| if let Field::Ptr { buffer, .. } = f { Some(*buffer) } else { None })
                    .collect(),
                _ => vec![],
            })
            .collect(),
    }
}

impl Planner<'_> {
    fn buffer(&mut self, v: Value, kind: BufferKind) -> Result<BufferId> {
        let info = self.g.value_info(v);
        let (Some(dtype), Some(shape)) = (info.ty.dtype, info.ty.concrete_shape()) else {
            return Err(CudaError::Unsupported(format!("value {} has no static type ({})", info.name, info.ty)));
        };
        crate::codegen::storage_type(dtype)?;
        let id = self.plan.buffers.len();
        self.plan.buffers.push(Buffer { name: info.name.clone(), dtype, shape, kind, output: false, last_use: None });
        self.values.insert(v, id);
        Ok(id)
    }

    fn temp(&mut self, name: String, dtype: DType, shape: Vec<usize>) -> BufferId {
        self.plan.buffers.push(Buffer { name, dtype, shape, kind: BufferKind::Temp, output: false, last_use: None });
        self.plan.buffers.len() - 1
    }

    /// Input `slot` of `id`, a constant, stored as `f` makes it (a filter in another layout, a
    /// weight transposed): rewritten in place where `id` is the constant's only reader, else a
    /// new constant named after it with `.suffix` (one for all readers that want the same).
    /// `None` where the input is not a constant.
    fn rewritten_const(
        &mut self,
        id: NodeId,
        slot: usize,
        suffix: &str,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Option<BufferId>> {
        let w = self.required(id, slot)?;
        let b = &self.plan.buffers[w];
        let BufferKind::Const(t) = &b.kind else { return Ok(None) };
        let t = f(t)?;
        let v = self.g.inputs_of(id).get(slot).copied().flatten();
        let v = v.ok_or_else(|| CudaError::Invalid(format!("input {slot} is missing")))?;
        let only_reader = self.g.users(v).len() == 1 && !self.g.is_output(v);
        let shape = t.shape().to_vec();
        if only_reader {
            let b = &mut self.plan.buffers[w];
            b.shape = shape;
            b.kind = BufferKind::Const(t);
            return Ok(Some(w));
        }
        let name = format!("{}.{suffix}", b.name);
        let same = |x: &Buffer| x.name == name && matches!(&x.kind, BufferKind::Const(c) if *c == t);
        if let Some(existing) = self.plan.buffers.iter().position(same) {
            return Ok(Some(existing));
        }
        Ok(Some(self.const_buffer(name, t)))
    }

    /// A constant buffer that no graph value names (tables and rewritten weights the planner
    /// makes).
    pub(super) fn const_buffer(&mut self, name: String, t: Tensor) -> BufferId {
        let (dtype, shape) = (t.dtype(), t.shape().to_vec());
        self.plan.buffers.push(Buffer {
            name,
            dtype,
            shape,
            kind: BufferKind::Const(t),
            output: false,
            last_use: None,
        });
        self.plan.buffers.len() - 1
    }

    fn input(&self, id: NodeId, slot: usize) -> Result<Option<BufferId>> {
        match self.g.inputs_of(id).get(slot).copied().flatten() {
            None => Ok(None),
            Some(v) => self.values.get(&v).copied().map(Some).ok_or_else(|| {
                CudaError::Unsupported(format!("input {slot} comes from a node the plan could not lower"))
            }),
        }
    }

    fn required(&self, id: NodeId, slot: usize) -> Result<BufferId> {
        self.input(id, slot)?.ok_or_else(|| CudaError::Invalid(format!("input {slot} is missing")))
    }

    fn use_family(&mut self, f: KernelFamily) {
        if !self.plan.families.contains(&f) {
            self.plan.families.push(f);
        }
    }

    fn step(&mut self, id: NodeId, kind: StepKind) {
        self.plan.steps.push(Step { node: self.g.node(id).name.clone(), kind });
    }

    fn node(&mut self, id: NodeId) -> Result<()> {
        if self.channels_last(id)? {
            return Ok(());
        }
        self.materialize_inputs(id)?;
        let node = self.g.node(id);
        match &node.op {
            Op::Input => Ok(()),
            Op::Const(t) => {
                self.buffer(Value { node: id, slot: 0 }, BufferKind::Const(t.clone()))?;
                Ok(())
            }
            Op::Elementwise(ElementwiseOp::LegacyBinary { op, axis }) => self.legacy_binary(id, *op, *axis),
            Op::Elementwise(ElementwiseOp::Clip { min: None, max: None })
                if (1..3).any(|s| self.g.inputs_of(id).get(s).copied().flatten().is_none()) =>
            {
                self.clip_partial(id)
            }
            Op::Elementwise(e) => {
                let n = node.num_inputs;
                let mut ins = vec![];
                for s in 0..n {
                    ins.push(self.input(id, s)?.ok_or_else(|| {
                        CudaError::Unsupported("an absent optional input cannot be lowered; fold it first".into())
                    })?);
                }
                // CastLike reads only the type of its second input.
                if let (ElementwiseOp::CastLike { saturate }, [x, like]) = (e, &ins[..]) {
                    let to = self.plan.buffers[*like].dtype;
                    return self.elementwise(id, &Expr::op(ElementwiseOp::Cast { to, saturate: *saturate }, 1), &[*x]);
                }
                let expr = Expr::op(e.clone(), n);
                // Opset-6 broadcasting and the like have no expression form.
                expr.check().map_err(|why| CudaError::Unsupported(format!("{} as an expression: {why}", e.name())))?;
                self.elementwise(id, &expr, &ins)
            }
            Op::Fused(FusedOp::Elementwise(expr)) => {
                let ins: Vec<BufferId> = (0..node.num_inputs).map(|s| self.required(id, s)).collect::<Result<_>>()?;
                let dts: Vec<DType> = ins.iter().map(|&b| self.plan.buffers[b].dtype).collect();
                if let Some((e, map)) = legacy::fold_cast_like(expr, &dts) {
                    let ins: Vec<BufferId> = map.iter().map(|&i| ins[i]).collect();
                    return self.elementwise(id, &e, &ins);
                }
                self.elementwise(id, expr, &ins)
            }
            Op::Fused(FusedOp::Epilogue { base: LinalgOp::Conv(attrs), base_inputs, expr }) => {
                self.conv(id, attrs, *base_inputs, Some(expr), false)
            }
            Op::Fused(FusedOp::Epilogue {
                base: base @ (LinalgOp::MatMulInteger | LinalgOp::ConvInteger(_)),
                base_inputs,
                expr,
            }) => self.integer_epilogue(id, base, *base_inputs, expr),
            Op::Fused(FusedOp::Epilogue { base, base_inputs, expr }) => self.matmul(id, base, *base_inputs, Some(expr)),
            Op::Linalg(base @ (LinalgOp::MatMul | LinalgOp::Gemm { .. })) => {
                self.matmul(id, base, node.num_inputs, None)
            }
            Op::Linalg(LinalgOp::Conv(attrs)) => self.conv(id, attrs, node.num_inputs, None, false),
            Op::Linalg(LinalgOp::ConvTranspose(attrs)) => self.conv_transpose(id, attrs),
            Op::Linalg(LinalgOp::ConvInteger(attrs)) => self.integer_conv(id, attrs, false),
            Op::Linalg(LinalgOp::QLinearConv(attrs)) => self.integer_conv(id, attrs, true),
            Op::Linalg(LinalgOp::MatMulInteger) => self.integer_matmul(id, false),
            Op::Linalg(LinalgOp::QLinearMatMul) => self.integer_matmul(id, true),
            Op::Pool(p) => self.pool(id, p),
            Op::Norm(NormOp::LayerNormalization { axis, epsilon, .. }) => self.norm(id, *axis, *epsilon, false),
            Op::Norm(NormOp::RMSNormalization { axis, epsilon, .. }) => self.norm(id, *axis, *epsilon, true),
            Op::Norm(NormOp::Softmax { axis, coerce_2d }) => self.softmax(id, *axis, *coerce_2d, false),
            Op::Norm(NormOp::LogSoftmax { axis, coerce_2d }) => self.softmax(id, *axis, *coerce_2d, true),
            Op::Norm(
                op @ (NormOp::BatchNormalization { .. }
                | NormOp::InstanceNormalization { .. }
                | NormOp::GroupNormalization { .. }
                | NormOp::LRN { .. }
                | NormOp::LpNormalization { .. }
                | NormOp::MeanVarianceNormalization { .. }),
            ) => self.norm_family(id, op),
            Op::Layout(
                LayoutOp::Reshape { .. }
                | LayoutOp::Flatten { .. }
                | LayoutOp::Squeeze { .. }
                | LayoutOp::Unsqueeze { .. }
                | LayoutOp::Identity
                | LayoutOp::Dropout,
            ) => {
                if node.outputs.get(1).is_some_and(|o| !o.name.is_empty()) {
                    return Err(CudaError::Unsupported("Dropout's mask output has no kernel yet".into()));
                }
                self.view(id)
            }
            Op::Layout(LayoutOp::Transpose { perm }) => self.transpose(id, perm.as_deref()),
            Op::Layout(LayoutOp::Concat { axis }) => self.concat(id, *axis),
            Op::Layout(LayoutOp::Gather { axis }) => self.gather(id, *axis),
            Op::Layout(LayoutOp::Slice { attrs }) => self.slice(id, attrs.as_ref()),
            Op::Layout(LayoutOp::Split { axis, .. }) => self.split(id, *axis),
            Op::Layout(LayoutOp::Pad { mode, pads, value }) => self.pad(id, *mode, pads.as_deref(), *value),
            Op::Layout(LayoutOp::Expand) => self.expand(id),
            Op::Layout(LayoutOp::DepthToSpace { blocksize, mode }) => self.depth_space(id, true, *blocksize, *mode),
            Op::Layout(LayoutOp::SpaceToDepth { blocksize }) => {
                self.depth_space(id, false, *blocksize, kiln_ir::ops::layout::DepthToSpaceMode::Dcr)
            }
            Op::Layout(LayoutOp::CenterCropPad { axes }) => self.center_crop_pad(id, axes.as_deref()),
            Op::Layout(LayoutOp::Tile) => self.tile(id),
            Op::Spatial(SpatialOp::Resize(attrs)) => self.resize(id, attrs),
            Op::Spatial(SpatialOp::GridSample { mode, padding_mode, align_corners }) => {
                self.grid_sample(id, *mode, *padding_mode, *align_corners)
            }
            Op::Signal(kiln_ir::ops::signal::SignalOp::Window { function, periodic, .. }) => {
                self.window(id, *function, *periodic)
            }
            Op::Spatial(SpatialOp::Col2Im { dilations, pads, strides }) => self.col2im(id, dilations, pads, strides),
            Op::Spatial(SpatialOp::AffineGrid { align_corners }) => self.affine_grid(id, *align_corners),
            Op::Spatial(SpatialOp::RoiAlign {
                max,
                output_height,
                output_width,
                sampling_ratio,
                spatial_scale,
                half_pixel,
            }) => self.roi_align(
                id,
                spatial::RoiAlignParams {
                    max: *max,
                    oh: *output_height,
                    ow: *output_width,
                    sampling_ratio: *sampling_ratio,
                    spatial_scale: *spatial_scale,
                    half_pixel: *half_pixel,
                },
            ),
            Op::Reduce(ReduceOp::Reduce { reducer, axes, noop_with_empty_axes, .. }) => {
                self.reduce(id, *reducer, axes.as_deref(), *noop_with_empty_axes)
            }
            Op::Reduce(ReduceOp::ArgMax { axis, select_last_index, .. }) => {
                self.arg(id, "argmax", *axis, *select_last_index)
            }
            Op::Reduce(ReduceOp::ArgMin { axis, select_last_index, .. }) => {
                self.arg(id, "argmin", *axis, *select_last_index)
            }
            op @ (Op::Layout(
                LayoutOp::GatherElements { .. }
                | LayoutOp::GatherND { .. }
                | LayoutOp::ScatterElements { .. }
                | LayoutOp::ScatterND { .. }
                | LayoutOp::Trilu { .. }
                | LayoutOp::EyeLike { .. }
                | LayoutOp::OneHot { .. },
            )
            | Op::Reduce(ReduceOp::CumSum { .. } | ReduceOp::TopK { .. })
            | Op::Norm(NormOp::Hardmax { .. })
            | Op::Loss(_)) => self.index_op(id, op),
            Op::Fused(FusedOp::PackedAttention { num_heads, scale }) => self.packed_attention(id, *num_heads, *scale),
            Op::Attention(AttentionOp::Attention(a)) => self.attention(id, a),
            Op::Quant(q) => self.quant(id, q),
            Op::Attention(AttentionOp::RotaryEmbedding { interleaved, rotary_embedding_dim, num_heads }) => {
                self.rotary(id, *interleaved, *rotary_embedding_dim, *num_heads)
            }
            other => Err(CudaError::Unsupported(format!("the launch planner does not lower {} yet", other.name()))),
        }
    }

    fn out(&mut self, id: NodeId, slot: usize) -> Result<BufferId> {
        self.buffer(Value { node: id, slot }, BufferKind::Temp)
    }

    fn elementwise(&mut self, id: NodeId, expr: &Expr, ins: &[BufferId]) -> Result<()> {
        let dts: Vec<DType> = ins.iter().map(|&b| self.plan.buffers[b].dtype).collect();
        let k = elementwise_kernel(expr, &dts)?;
        let out = self.out(id, 0)?;
        self.launch_generated(id, k, ins, out)
    }

    fn launch_generated(&mut self, id: NodeId, k: ElementwiseKernel, ins: &[BufferId], out: BufferId) -> Result<()> {
        let shape = &self.plan.buffers[out].shape;
        let inputs = ins
            .iter()
            .map(|&b| Ok((b, broadcast_strides(&self.plan.buffers[b].shape, shape)?)))
            .collect::<Result<Vec<_>>>()?;
        self.launch_elementwise(id, k, inputs, out)
    }

    /// The index of generated kernel `k` in the plan, adding it the first time (kernels with
    /// the same name are the same source).
    fn generated_index(&mut self, k: ElementwiseKernel) -> usize {
        match self.plan.generated.iter().position(|g| g.name == k.name) {
            Some(i) => i,
            None => {
                self.plan.generated.push(k);
                self.plan.generated.len() - 1
            }
        }
    }

    /// A generated kernel over `out`'s shape, each input read with its strides over it.
    fn launch_elementwise(
        &mut self,
        id: NodeId,
        k: ElementwiseKernel,
        inputs: Vec<(BufferId, Vec<i64>)>,
        out: BufferId,
    ) -> Result<()> {
        let shape = &self.plan.buffers[out].shape;
        if k.output != self.plan.buffers[out].dtype {
            return Err(CudaError::Invalid(format!(
                "the expression gives {}, the node's output is {}",
                k.output, self.plan.buffers[out].dtype
            )));
        }
        let strides: Vec<Vec<i64>> = inputs.iter().map(|(_, s)| s.clone()).collect();
        let config = crate::codegen::elementwise_launch(&k, shape, &strides)?;
        let kernel = k.name.clone();
        let index = self.generated_index(k);
        self.step(
            id,
            StepKind::Kernel(KernelStep {
                module: ModuleRef::Generated(index),
                kernel,
                config,
                args: vec![Arg::Elementwise { inputs, output: out }],
            }),
        );
        Ok(())
    }

    fn matmul(&mut self, id: NodeId, base: &LinalgOp, base_inputs: usize, expr: Option<&Expr>) -> Result<()> {
        let (alpha, beta, trans_a, trans_b) = match base {
            LinalgOp::MatMul => (1.0, 0.0, false, false),
            LinalgOp::Gemm { alpha, beta, trans_a, trans_b } => (*alpha, *beta, *trans_a, *trans_b),
            other => return Err(CudaError::Unsupported(format!("{} is not lowered to cuBLASLt yet", other.name()))),
        };
        let a = self.required(id, 0)?;
        let b = self.required(id, 1)?;
        let c = if matches!(base, LinalgOp::Gemm { .. }) && base_inputs > 2 { self.input(id, 2)? } else { None };
        let (ash, bsh) = (self.plan.buffers[a].shape.clone(), self.plan.buffers[b].shape.clone());
        let dtype = self.plan.buffers[a].dtype;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) || self.plan.buffers[b].dtype != dtype {
            return Err(CudaError::Unsupported(format!(
                "cuBLASLt matmul of {dtype} and {}",
                self.plan.buffers[b].dtype
            )));
        }
        // MatMul: [..., m, k] x [..., k, n], 1-D operands promoted (A to a row, B to a column),
        // batch dims broadcast. An operand whose batch is one matrix is shared (stride 0); one
        // that covers only part of the output's batch is expanded by a kernel first. Gemm: 2-D.
        let (mut a, mut b) = (a, b);
        let (m, k, n, batch, batch_strides) = match base {
            LinalgOp::MatMul => {
                if ash.is_empty() || bsh.is_empty() {
                    return Err(CudaError::Invalid(format!("MatMul of scalars ({ash:?} x {bsh:?})")));
                }
                let a2 = if ash.len() == 1 { vec![1, ash[0]] } else { ash.clone() };
                let b2 = if bsh.len() == 1 { vec![bsh[0], 1] } else { bsh.clone() };
                let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
                let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
                if k != k2 {
                    return Err(CudaError::Invalid(format!("MatMul of {ash:?} and {bsh:?}: inner dims differ")));
                }
                let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
                let out_batch = kiln_ir::ops::infer::broadcast_shapes(ab, bb).ok_or_else(|| {
                    CudaError::Invalid(format!("MatMul of {ash:?} and {bsh:?}: batch dims do not broadcast"))
                })?;
                let batch: usize = out_batch.iter().product();
                let mut stride = |x: &mut BufferId, xb: &[usize], mat: [usize; 2], what: &str| -> Result<usize> {
                    let count: usize = xb.iter().product();
                    // (A of a single matrix keeps the stride of one, as it always had.)
                    if count == 1 && (what == "b" || batch > 1) {
                        return Ok(0);
                    }
                    if count != batch {
                        let mut full = out_batch.clone();
                        full.extend(mat);
                        let mut shape = xb.to_vec();
                        shape.extend(mat);
                        let strides = broadcast_strides(&shape, &full)?;
                        let name = format!("{}.{what}_broadcast", self.g.node(id).name);
                        let t = self.temp(name, dtype, full.clone());
                        self.permute_launch(id, *x, t, &full, &strides, 0)?;
                        *x = t;
                    }
                    Ok(mat[0] * mat[1])
                };
                let sa = stride(&mut a, ab, [m, k], "a")?;
                let sb = stride(&mut b, bb, [k, n], "b")?;
                (m, k, n, batch, [sa, sb, m * n])
            }
            _ => {
                if ash.len() != 2 || bsh.len() != 2 {
                    return Err(CudaError::Invalid(format!("Gemm of {ash:?} and {bsh:?}: both must be 2-D")));
                }
                let (m, k) = if trans_a { (ash[1], ash[0]) } else { (ash[0], ash[1]) };
                let n = if trans_b { bsh[0] } else { bsh[1] };
                (m, k, n, 1, [0, 0, 0])
            }
        };
        // Gemm's C: a full [m, n] C goes to cuBLASLt with beta; a row [n] with beta 1 is its
        // bias epilogue; any other broadcast is added by a generated kernel afterwards.
        let mut gemm_c = None;
        let mut c_beta = beta;
        let mut bias = None;
        let mut extra_c = None;
        if let Some(cb) = c {
            let csh = self.plan.buffers[cb].shape.clone();
            if beta == 0.0 {
            } else if csh == [m, n] {
                gemm_c = Some(cb);
            } else if beta == 1.0 && csh.iter().product::<usize>() == n && csh.last() == Some(&n) {
                bias = Some(cb);
            } else {
                extra_c = Some(cb);
            }
        }
        let out = self.out(id, 0)?;
        let out_dtype = self.plan.buffers[out].dtype;
        let out_shape = self.plan.buffers[out].shape.clone();
        let extra: Vec<BufferId> =
            (base_inputs..self.g.node(id).num_inputs).map(|s| self.required(id, s)).collect::<Result<_>>()?;
        // What cuBLASLt can fuse of the epilogue, if anything.
        let fused = match (expr, extra_c) {
            (None, None) => Some(match bias {
                Some(bb) => GemmEpilogue::Bias(bb),
                None => GemmEpilogue::None,
            }),
            (Some(e), None) if out_dtype == dtype => {
                let shapes: Vec<Vec<usize>> =
                    extra
                        .iter()
                        .map(|&x| {
                            if self.plan.buffers[x].dtype == dtype {
                                self.plan.buffers[x].shape.clone()
                            } else {
                                vec![]
                            }
                        })
                        .collect();
                let full = (gemm_c.is_none() && bias.is_none()).then_some(out_shape.as_slice());
                match (lt_epilogue(e, &shapes, n, full), bias) {
                    (Some(LtEpilogue { relu, gelu, bias: eb, residual }), None) => {
                        // A residual is cuBLASLt's C, read with beta 1: D = A B + C + bias.
                        if let Some(r) = residual {
                            gemm_c = Some(extra[r]);
                            c_beta = 1.0;
                        }
                        Some(epilogue(relu, gelu, eb.map(|i| extra[i])))
                    }
                    (Some(LtEpilogue { relu, gelu, bias: None, residual: None }), Some(bb)) => {
                        Some(epilogue(relu, gelu, Some(bb)))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let gemm = |d: BufferId, epilogue: GemmEpilogue| GemmStep {
            a,
            b,
            c: gemm_c,
            d,
            m,
            n,
            k,
            batch,
            batch_strides,
            trans_a,
            trans_b,
            alpha,
            beta: if gemm_c.is_some() { c_beta } else { 0.0 },
            dtype,
            out_dtype: dtype,
            epilogue,
        };
        match fused {
            Some(ep) => {
                self.step(id, StepKind::Gemm(gemm(out, ep)));
            }
            None => {
                // The GEMM into an accumulator, then a generated epilogue kernel.
                let name = format!("{}.acc", self.g.node(id).name);
                let acc = self.temp(name, dtype, out_shape.clone());
                let ep = match bias {
                    Some(bb) => GemmEpilogue::Bias(bb),
                    None => GemmEpilogue::None,
                };
                self.step(id, StepKind::Gemm(gemm(acc, ep)));
                // C with beta first (when cuBLASLt could not take it), then the node's epilogue.
                let mut e = expr.cloned().unwrap_or_else(Expr::input);
                let mut ins = vec![acc];
                ins.extend(&extra);
                if let Some(cb) = extra_c {
                    let cdt = self.plan.buffers[cb].dtype;
                    let add_c = Expr {
                        nodes: vec![
                            ExprNode::Input(0),
                            ExprNode::Input(1),
                            ExprNode::Scalar { value: beta as f64, dtype: cdt },
                            ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Mul), args: vec![1, 2] },
                            ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args: vec![0, 3] },
                        ],
                    };
                    // in0 of the node's epilogue becomes acc + beta * C. After the substitution
                    // the inputs are: 0 (gone), the epilogue's own up to its last one read,
                    // then acc and C; `canonical` renumbers them in order of use.
                    let base = e.num_inputs();
                    let mut old = vec![acc];
                    old.extend(extra.iter().take(base.saturating_sub(1)));
                    old.extend([acc, cb]);
                    // The accumulator (old input `base`, add_c's in0) stays the kernel's in0.
                    let (canon, map) = e.substitute(0, &add_c).canonical_pinned(&|i| i, Some(base));
                    ins = map.iter().map(|&i| old[i]).collect();
                    e = canon;
                }
                let dts: Vec<DType> = ins.iter().map(|&x| self.plan.buffers[x].dtype).collect();
                let k = epilogue_kernel(&e, dts[0], &dts[1..])?;
                self.launch_generated(id, k, &ins, out)?;
            }
        }
        Ok(())
    }

    fn norm(&mut self, id: NodeId, axis: i64, epsilon: f32, rms: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        let scale = self.required(id, 1)?;
        let bias = if rms { None } else { self.input(id, 2)? };
        let (shape, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let r = shape.len() as i64;
        let ax = if axis < 0 { axis + r } else { axis };
        if !(0..r).contains(&ax) {
            return Err(CudaError::Invalid(format!("axis {axis} is out of range for rank {r}")));
        }
        let rows: usize = shape[..ax as usize].iter().product();
        let n: usize = shape[ax as usize..].iter().product();
        for t in [Some(scale), bias].into_iter().flatten() {
            let b = &self.plan.buffers[t];
            if b.shape.iter().product::<usize>() != n || b.dtype != dtype {
                return Err(CudaError::Unsupported(format!(
                    "scale and bias must hold the {n} normalized elements in {dtype}, found {:?} {}",
                    b.shape, b.dtype
                )));
            }
        }
        let sfx = crate::codegen::dtype_suffix(dtype)?;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(CudaError::Unsupported(format!("no norm kernel for {dtype}")));
        }
        let y = self.out(id, 0)?;
        let node = self.g.node(id);
        let used = |slot: usize| node.outputs.get(slot).is_some_and(|o| !o.name.is_empty());
        let mean = if !rms && used(1) { Some(self.out(id, 1)?) } else { None };
        let inv = if !rms && used(2) { Some(self.out(id, 2)?) } else { None };
        let buf = |b: Option<BufferId>| b.map_or(Arg::Null, Arg::Buffer);
        let args = if rms {
            vec![
                Arg::Buffer(x),
                Arg::Buffer(scale),
                Arg::Buffer(y),
                Arg::I64(rows as i64),
                Arg::I64(n as i64),
                Arg::F32(epsilon),
            ]
        } else {
            vec![
                Arg::Buffer(x),
                Arg::Buffer(scale),
                buf(bias),
                Arg::Buffer(y),
                Arg::I64(rows as i64),
                Arg::I64(n as i64),
                Arg::F32(epsilon),
                buf(mean),
                buf(inv),
            ]
        };
        self.use_family(KernelFamily::Norm);
        let op = if rms { "rmsnorm" } else { "layernorm" };
        let warp = launch::warp_row_fits(n as u64, dtype.size() as u64);
        // A LayerNorm whose output a QuantizeLinear also reads writes the i8 copy itself.
        if !rms && warp {
            if let Some((quantize, c, r)) = self.quantize_reader(Value { node: id, slot: 0 }) {
                let mut args = args;
                args.extend([Arg::Buffer(self.out(quantize, 0)?), Arg::F32(c), Arg::F32(r)]);
                self.absorbed.insert(quantize);
                let kernel = format!("layernorm_warp_q_{sfx}");
                let config = launch::warp_per_row(rows as u64);
                let module = ModuleRef::Family(KernelFamily::Norm);
                self.step(id, StepKind::Kernel(KernelStep { module, kernel, config, args }));
                return Ok(());
            }
        }
        // Rows that fit one warp's registers take the warp-per-row kernel (same arguments);
        // the kernel itself falls back to element loads if a pointer is not 16-byte aligned.
        let (kernel, config) = if warp {
            (format!("{op}_warp_{sfx}"), launch::warp_per_row(rows as u64))
        } else {
            (format!("{op}_{sfx}"), launch::per_row(rows as u64, n as u64))
        };
        self.step(
            id,
            StepKind::Kernel(KernelStep { module: ModuleRef::Family(KernelFamily::Norm), kernel, config, args }),
        );
        Ok(())
    }

    /// A reader of `v` that quantizes it to i8 by a constant scale, element for element
    /// (`Cast<i8>(Clip<-128,127>(Round(Cast<f32>(v) / c)))`, as fusion leaves a
    /// QuantizeLinear without zero point), with `c` and its reciprocal as the generated kernel
    /// would divide by them (see `codegen::const_reciprocal`); none where there is no such
    /// reader or its output is not an i8 value of `v`'s shape.
    fn quantize_reader(&self, v: Value) -> Option<(NodeId, f32, f32)> {
        let shape = self.g.value_info(v).ty.concrete_shape()?;
        self.g.users(v).into_iter().find_map(|(u, slot)| {
            let node = self.g.node(u);
            let Op::Fused(FusedOp::Elementwise(e)) = &node.op else { return None };
            let out = Value { node: u, slot: 0 };
            if slot != 0 || node.num_inputs != 1 {
                return None;
            }
            let ty = &self.g.value_info(out).ty;
            if ty.dtype != Some(DType::I8) || ty.concrete_shape()? != shape {
                return None;
            }
            let c = quantize_scale(e)?;
            let r = crate::codegen::const_reciprocal(c)?;
            Some((u, c, r))
        })
    }

    fn softmax(&mut self, id: NodeId, axis: i64, coerce_2d: bool, log: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        let (shape, dtype) = (self.plan.buffers[x].shape.clone(), self.plan.buffers[x].dtype);
        let r = shape.len() as i64;
        let ax = if axis < 0 { axis + r } else { axis };
        if !(0..r.max(1)).contains(&ax) {
            return Err(CudaError::Invalid(format!("axis {axis} is out of range for rank {r}")));
        }
        let ax = ax as usize;
        let outer: usize = shape[..ax].iter().product();
        let (n, inner) = if coerce_2d {
            (shape[ax..].iter().product(), 1)
        } else {
            (shape.get(ax).copied().unwrap_or(1), shape[(ax + 1).min(shape.len())..].iter().product())
        };
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(CudaError::Unsupported(format!("no softmax kernel for {dtype}")));
        }
        let y = self.out(id, 0)?;
        self.use_family(KernelFamily::Reduce);
        let op = if log { "logsoftmax" } else { "softmax" };
        let sfx = crate::codegen::dtype_suffix(dtype)?;
        // Contiguous rows that fit one warp's registers take the warp-per-row kernel.
        let (kernel, args, config) = if inner == 1 && launch::warp_row_fits(n as u64, dtype.size() as u64) {
            let args = vec![Arg::Buffer(x), Arg::Buffer(y), Arg::I64(outer as i64), Arg::I64(n as i64)];
            (format!("{op}_warp_{sfx}"), args, launch::warp_per_row(outer as u64))
        } else {
            let args = vec![
                Arg::Buffer(x),
                Arg::Buffer(y),
                Arg::I64(outer as i64),
                Arg::I64(n as i64),
                Arg::I64(inner as i64),
            ];
            (format!("{op}_{sfx}"), args, launch::per_row((outer * inner) as u64, n as u64))
        };
        self.step(
            id,
            StepKind::Kernel(KernelStep { module: ModuleRef::Family(KernelFamily::Reduce), kernel, config, args }),
        );
        Ok(())
    }

    /// The axis `axis` of a rank-`rank` tensor, negative counting from the end.
    fn axis(axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if (0..r).contains(&a) {
            Ok(a as usize)
        } else {
            Err(CudaError::Invalid(format!("axis {axis} is out of range for rank {rank}")))
        }
    }

    fn kernel(&mut self, id: NodeId, family: KernelFamily, kernel: String, config: LaunchConfig, args: Vec<Arg>) {
        self.use_family(family);
        self.step(id, StepKind::Kernel(KernelStep { module: ModuleRef::Family(family), kernel, config, args }));
    }

    fn view(&mut self, id: NodeId) -> Result<()> {
        let x = self.required(id, 0)?;
        // Views of views point at the memory's owner.
        let owner = match self.plan.buffers[x].kind {
            BufferKind::View(o) => o,
            _ => x,
        };
        let y = self.buffer(Value { node: id, slot: 0 }, BufferKind::View(owner))?;
        let (a, b) = (&self.plan.buffers[x], &self.plan.buffers[y]);
        if a.dtype != b.dtype || a.shape.iter().product::<usize>() != b.shape.iter().product::<usize>() {
            return Err(CudaError::Invalid(format!(
                "a view of {}{:?} cannot be {}{:?}",
                a.dtype, a.shape, b.dtype, b.shape
            )));
        }
        Ok(())
    }

    fn width(&self, b: BufferId) -> Result<&'static str> {
        launch::width_suffix(self.plan.buffers[b].dtype.size())
    }

    fn transpose(&mut self, id: NodeId, perm: Option<&[i64]>) -> Result<()> {
        let x = self.required(id, 0)?;
        let shape = self.plan.buffers[x].shape.clone();
        let r = shape.len();
        let perm: Vec<usize> = match perm {
            Some(p) => p.iter().map(|&a| Self::axis(a, r)).collect::<Result<_>>()?,
            None => (0..r).rev().collect(),
        };
        let y = self.out(id, 0)?;
        self.permute(id, x, y, &perm)
    }

    /// A step writing `x` with its dims permuted by `perm` into `y`.
    fn permute(&mut self, id: NodeId, x: BufferId, y: BufferId, perm: &[usize]) -> Result<()> {
        let shape = &self.plan.buffers[x].shape;
        // A batched 2-D transpose (NCHW <-> NHWC among them) goes through shared-memory
        // tiles, so both its reads and its writes are coalesced.
        // One side under 16 takes a thread per element of the other instead. (Past one
        // launch's tiles, the element-wise permute below takes it.)
        let tiled = batched_transpose(shape, perm).and_then(|(b, r, c)| {
            if r.min(c) < 16 {
                Some((b, r, c, "transpose_narrow", launch::grid_stride((b * r.max(c)) as u64)))
            } else {
                Some((b, r, c, "transpose2d", launch::transpose2d(b as u64, r as u64, c as u64).ok()?))
            }
        });
        if let Some((batch, rows, cols, kernel, config)) = tiled {
            let w = self.width(x)?;
            let args = vec![
                Arg::Buffer(x),
                Arg::Buffer(y),
                Arg::I64(batch as i64),
                Arg::I64(rows as i64),
                Arg::I64(cols as i64),
            ];
            self.kernel(id, KernelFamily::Layout, format!("{kernel}_{w}"), config, args);
            return Ok(());
        }
        let strides = crate::codegen::broadcast_strides(shape, shape)?;
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let out_strides: Vec<i64> = perm.iter().map(|&p| strides[p]).collect();
        let w = self.width(x)?;
        let n: usize = out_shape.iter().product();
        let (param, rank) = launch::strided_param(&out_shape, &out_strides)?;
        let fields =
            param.0.chunks_exact(8).map(|c| Field::I64(i64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))).collect();
        let args =
            vec![Arg::Buffer(x), Arg::Buffer(y), Arg::I64(n as i64), Arg::I32(rank), Arg::Struct(fields), Arg::I64(0)];
        self.kernel(id, KernelFamily::Layout, format!("permute_{w}"), launch::grid_stride(n as u64), args);
        Ok(())
    }

    fn concat(&mut self, id: NodeId, axis: i64) -> Result<()> {
        let y = self.out(id, 0)?;
        let shape = self.plan.buffers[y].shape.clone();
        let ax = Self::axis(axis, shape.len())?;
        let outer: usize = shape[..ax].iter().product();
        let inner: usize = shape[ax + 1..].iter().product();
        let total = shape[ax] * inner;
        let w = self.width(y)?;
        let mut off = 0usize;
        for slot in 0..self.g.node(id).num_inputs {
            let x = self.required(id, slot)?;
            let len = self.plan.buffers[x].shape.get(ax).copied().unwrap_or(1) * inner;
            let args = vec![
                Arg::Buffer(x),
                Arg::Buffer(y),
                Arg::I64(outer as i64),
                Arg::I64(len as i64),
                Arg::I64(len as i64),
                Arg::I64(0),
                Arg::I64(total as i64),
                Arg::I64(off as i64),
            ];
            self.kernel(
                id,
                KernelFamily::Layout,
                format!("copy_rows_{w}"),
                launch::grid_stride((outer * len) as u64),
                args,
            );
            off += len;
        }
        if off != total {
            return Err(CudaError::Invalid(format!(
                "inputs cover {off} of {total} elements per row along axis {axis}"
            )));
        }
        Ok(())
    }

    fn gather(&mut self, id: NodeId, axis: i64) -> Result<()> {
        let x = self.required(id, 0)?;
        let idx = self.required(id, 1)?;
        if self.plan.buffers[idx].dtype != DType::I64 {
            return Err(CudaError::Unsupported(format!(
                "Gather indices of {} (the kernel takes i64)",
                self.plan.buffers[idx].dtype
            )));
        }
        let shape = self.plan.buffers[x].shape.clone();
        let ax = Self::axis(axis, shape.len())?;
        let outer: usize = shape[..ax].iter().product();
        let inner: usize = shape[ax + 1..].iter().product();
        let nidx: usize = self.plan.buffers[idx].shape.iter().product();
        let w = self.width(x)?;
        let y = self.out(id, 0)?;
        let name = format!("{}.index_error", self.g.node(id).name);
        let err = self.temp(name, DType::I32, vec![1]);
        let message = format!("Gather {}: an index is outside [-{}, {})", self.g.node(id).name, shape[ax], shape[ax]);
        self.plan.error_flags.push((err, message));
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(idx),
            Arg::Buffer(y),
            Arg::I64(outer as i64),
            Arg::I64(shape[ax] as i64),
            Arg::I64(nidx as i64),
            Arg::I64(inner as i64),
            Arg::Buffer(err),
        ];
        // Rows of whole 16-byte vectors (an embedding table's rows, say) are copied as vectors;
        // the kernel falls back to the element loop if a pointer is not 16-byte aligned.
        let row_bytes = inner * self.plan.buffers[x].dtype.size();
        let (kernel, config) = if row_bytes.is_multiple_of(16) && row_bytes > 0 {
            (format!("gather_rows_{w}"), launch::grid_stride((outer * nidx * (row_bytes / 16)) as u64))
        } else {
            (format!("gather_{w}"), launch::grid_stride((outer * nidx * inner) as u64))
        };
        self.kernel(id, KernelFamily::Layout, kernel, config, args);
        Ok(())
    }

    /// `[outer, n, inner]` for a reduction over a run of neighbouring axes.
    fn rows(shape: &[usize], axes: &[usize]) -> Result<(usize, usize, usize)> {
        let (first, last) = match (axes.iter().min(), axes.iter().max()) {
            (Some(&a), Some(&b)) => (a, b),
            _ => return Ok((1, shape.iter().product(), 1)),
        };
        if last - first + 1 != axes.len() {
            return Err(CudaError::Unsupported(format!("a reduction over axes {axes:?}, which are not neighbours")));
        }
        Ok((shape[..first].iter().product(), shape[first..=last].iter().product(), shape[last + 1..].iter().product()))
    }

    fn float_suffix(&self, b: BufferId, what: &str) -> Result<&'static str> {
        let dt = self.plan.buffers[b].dtype;
        let ok = matches!(dt, DType::F32 | DType::F16 | DType::BF16);
        let int_ok = matches!(what, "reduce_sum" | "reduce_max" | "reduce_min" | "argmax" | "argmin")
            && matches!(dt, DType::I32 | DType::I64);
        let f64_ok = (what.starts_with("reduce_") || what == "argmax" || what == "argmin") && dt == DType::F64;
        let bool_ok = matches!(what, "reduce_max" | "reduce_min") && dt == DType::Bool;
        if ok || int_ok || f64_ok || bool_ok {
            crate::codegen::dtype_suffix(dt)
        } else {
            Err(CudaError::Unsupported(format!("no {what} kernel for {dt}")))
        }
    }

    fn reduce(&mut self, id: NodeId, reducer: Reducer, axes: Option<&[i64]>, noop_with_empty_axes: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        let shape = self.plan.buffers[x].shape.clone();
        let axes: Vec<usize> = match axes {
            Some(a) if !a.is_empty() => a.iter().map(|&v| Self::axis(v, shape.len())).collect::<Result<_>>()?,
            Some(_) if noop_with_empty_axes => return self.view(id),
            Some(_) => (0..shape.len()).collect(),
            None => match self.const_ints(id, 1)? {
                Some(a) if !a.is_empty() => a.iter().map(|&v| Self::axis(v, shape.len())).collect::<Result<_>>()?,
                _ if noop_with_empty_axes => return self.view(id),
                _ => (0..shape.len()).collect(),
            },
        };
        let name = match reducer {
            Reducer::Sum => "reduce_sum",
            Reducer::Mean => "reduce_mean",
            Reducer::Max => "reduce_max",
            Reducer::Min => "reduce_min",
            Reducer::Prod => "reduce_prod",
            Reducer::L1 => "reduce_l1",
            Reducer::L2 => "reduce_l2",
            Reducer::SumSquare => "reduce_sumsquare",
            Reducer::LogSum => "reduce_logsum",
            Reducer::LogSumExp => "reduce_logsumexp",
        };
        let sfx = self.float_suffix(x, name)?;
        let (x, (outer, n, inner)) = match Self::rows(&shape, &axes) {
            Ok(rows) => (x, rows),
            // Axes that are not neighbours: the kept dims, then the reduced ones, by a copy.
            Err(_) => self.reduced_last(id, x, &axes)?,
        };
        let y = self.out(id, 0)?;
        let args =
            vec![Arg::Buffer(x), Arg::Buffer(y), Arg::I64(outer as i64), Arg::I64(n as i64), Arg::I64(inner as i64)];
        self.kernel(
            id,
            KernelFamily::Reduce,
            format!("{name}_{sfx}"),
            launch::per_row((outer * inner) as u64, n as u64),
            args,
        );
        Ok(())
    }

    fn arg(&mut self, id: NodeId, name: &str, axis: i64, select_last_index: bool) -> Result<()> {
        let x = self.required(id, 0)?;
        let shape = self.plan.buffers[x].shape.clone();
        let ax = Self::axis(axis, shape.len())?;
        let sfx = self.float_suffix(x, name)?;
        let (outer, n, inner) = Self::rows(&shape, &[ax])?;
        let y = self.out(id, 0)?;
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(y),
            Arg::I64(outer as i64),
            Arg::I64(n as i64),
            Arg::I64(inner as i64),
            Arg::I32(select_last_index as i32),
        ];
        self.kernel(
            id,
            KernelFamily::Reduce,
            format!("{name}_{sfx}"),
            launch::per_row((outer * inner) as u64, n as u64),
            args,
        );
        Ok(())
    }

    fn packed_attention(&mut self, id: NodeId, heads: usize, scale: f32) -> Result<()> {
        let qkv = self.required(id, 0)?;
        let mask = self.input(id, 1)?;
        let (shape, dtype) = (self.plan.buffers[qkv].shape.clone(), self.plan.buffers[qkv].dtype);
        let [b, s, width] = shape[..] else {
            return Err(CudaError::Invalid(format!("packed QKV must be [batch, seq, 3 * hidden], found {shape:?}")));
        };
        if heads == 0 || width % (3 * heads) != 0 {
            return Err(CudaError::Invalid(format!("packed QKV width {width} is not 3 x {heads} heads x head size")));
        }
        let d = width / (3 * heads);
        let sfx = self.float_suffix(qkv, "attention")?;
        let y = self.out(id, 0)?;
        let (mask_strides, mask_len, mask_bool) = self.attention_mask(mask, dtype, [b, heads, s, s])?;
        let st = launch::AttnStrides::bshd(heads, s, d, width);
        let o = launch::AttnStrides::bshd(heads, s, d, heads * d);
        let esize = dtype.size();
        let mut args = launch::AttnArgs::new(b, heads, s, s, d, d, [st, st, st, o], scale);
        args.mask = mask_strides;
        args.mask_len = mask_len as i64;
        args.mask_bool = mask_bool;
        let ptr = |buffer: BufferId, offset_bytes: usize| Field::Ptr { buffer, offset_bytes };
        let (o, quant) = self.attention_output(id, &args, sfx, y)?;
        let operands = [ptr(qkv, 0), ptr(qkv, heads * d * esize), ptr(qkv, 2 * heads * d * esize), o];
        self.launch_attention(id, &args, sfx, operands, mask, None, quant)
    }
}

/// The parts of an epilogue cuBLASLt can apply.
struct LtEpilogue {
    relu: bool,
    gelu: bool,
    /// The epilogue input (1-based in the expression, 0-based here) that is a bias of `n`.
    bias: Option<usize>,
    /// The epilogue input of the output's full shape added to the product (a residual), which
    /// cuBLASLt reads as C with beta 1. Only without an activation.
    residual: Option<usize>,
}

fn epilogue(relu: bool, gelu: bool, bias: Option<BufferId>) -> GemmEpilogue {
    match (relu, gelu, bias) {
        (true, _, Some(b)) => GemmEpilogue::ReluBias(b),
        (true, _, None) => GemmEpilogue::Relu,
        (_, true, Some(b)) => GemmEpilogue::GeluBias(b),
        (_, true, None) => GemmEpilogue::Gelu,
        (false, false, Some(b)) => GemmEpilogue::Bias(b),
        (false, false, None) => GemmEpilogue::None,
    }
}

/// Matches `act(in0 + in1)`, `act(in0)` and `in0 + in1` with `act` ReLU or tanh-GELU and `in1`
/// a bias of `n` elements broadcast along rows; and, without an activation, sums of `in0`, at
/// most one bias and at most one residual of shape `full` (`None`: no residual may be taken).
/// `extra_shapes` are the epilogue inputs' shapes, empty for an input that may be neither.
/// cuBLASLt's GELU is the tanh approximation, so the erf form never matches.
fn lt_epilogue(e: &Expr, extra_shapes: &[Vec<usize>], n: usize, full: Option<&[usize]>) -> Option<LtEpilogue> {
    let (canon, map) = e.canonical(&|i| i);
    let nodes = &canon.nodes;
    // The 0-based epilogue input that expression input `input` reads, if it is not in0.
    let extra_input = |input: usize| -> Option<usize> { map.get(input)?.checked_sub(1) };
    let is_bias = |input: usize| -> Option<usize> {
        let old = extra_input(input)?;
        let shape = extra_shapes.get(old)?;
        (!shape.is_empty() && shape.iter().product::<usize>() == n && shape.last() == Some(&n)).then_some(old)
    };
    let is_residual = |input: usize| -> Option<usize> {
        let old = extra_input(input)?;
        (full.is_some() && extra_shapes.get(old).map(Vec::as_slice) == full).then_some(old)
    };
    let act = |op: &ElementwiseOp| match op {
        ElementwiseOp::Unary(UnaryOp::Relu) => Some((true, false)),
        ElementwiseOp::Unary(UnaryOp::Gelu { tanh: true }) => Some((false, true)),
        _ => None,
    };
    // The inputs a tree of Adds rooted at `i` sums, or None if it holds anything else.
    fn leaves(nodes: &[ExprNode], i: usize, out: &mut Vec<usize>) -> Option<()> {
        match nodes.get(i)? {
            ExprNode::Input(k) => out.push(*k),
            ExprNode::Op { op: ElementwiseOp::Binary(BinaryOp::Add), args } if args.len() == 2 => {
                leaves(nodes, args[0], out)?;
                leaves(nodes, args[1], out)?;
            }
            _ => return None,
        }
        Some(())
    }
    // (bias, residual) of the sum rooted at `i`: in0 exactly once, then a bias and a residual
    // at most once each (a residual only where `residual_ok`).
    let sum = |i: usize, residual_ok: bool| -> Option<(Option<usize>, Option<usize>)> {
        let mut ins = vec![];
        leaves(nodes, i, &mut ins)?;
        let (mut acc, mut bias, mut residual) = (false, None, None);
        for k in ins {
            if map.get(k) == Some(&0) && !acc {
                acc = true;
            } else if let (Some(b), None) = (is_bias(k), bias) {
                bias = Some(b);
            } else if let (true, Some(r), None) = (residual_ok, is_residual(k), residual) {
                residual = Some(r);
            } else {
                return None;
            }
        }
        acc.then_some((bias, residual))
    };
    let last = nodes.len().checked_sub(1)?;
    match &nodes[last] {
        ExprNode::Op { op, args } if args.len() == 1 => {
            let (relu, gelu) = act(op)?;
            let (bias, _) = sum(args[0], false)?;
            Some(LtEpilogue { relu, gelu, bias, residual: None })
        }
        _ => sum(last, true).map(|(bias, residual)| LtEpilogue { relu: false, gelu: false, bias, residual }),
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = |b: BufferId| format!("%{b}");
        for (i, b) in self.buffers.iter().enumerate() {
            let kind = match &b.kind {
                BufferKind::Input(k) => format!("input {k}"),
                BufferKind::Const(_) => "const".into(),
                BufferKind::Temp => "temp".into(),
                BufferKind::View(o) => format!("view of %{o}"),
            };
            let last = b.last_use.map_or("-".into(), |s| s.to_string());
            let out = if b.output { " output" } else { "" };
            writeln!(f, "%{i} {} {}{:?} {kind}{out} last_use {last}", b.name, b.dtype, b.shape)?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            let mut line = String::new();
            match &s.kind {
                StepKind::Gemm(g) => {
                    let types = if g.out_dtype == g.dtype {
                        g.dtype.to_string()
                    } else {
                        format!("{}->{}", g.dtype, g.out_dtype)
                    };
                    let _ = write!(
                        line,
                        "gemm {}: {} = {}{} x {}{} m={} n={} k={} batch={} strides={:?} alpha={} beta={} epilogue={:?}",
                        types,
                        buf(g.d),
                        buf(g.a),
                        if g.trans_a { "^T" } else { "" },
                        buf(g.b),
                        if g.trans_b { "^T" } else { "" },
                        g.m,
                        g.n,
                        g.k,
                        g.batch,
                        g.batch_strides,
                        g.alpha,
                        g.beta,
                        g.epilogue
                    );
                    if let Some(c) = g.c {
                        let _ = write!(line, " c={}", buf(c));
                    }
                }
                StepKind::Conv(c) => {
                    let _ = write!(
                        line,
                        "conv {}: {}{:?} = {}{:?} * {}{:?} pads={:?} strides={:?} dilations={:?} groups={} act={:?}",
                        c.dtype,
                        buf(c.y),
                        c.y_shape,
                        buf(c.x),
                        c.x_shape,
                        buf(c.w),
                        c.w_shape,
                        c.pads,
                        c.strides,
                        c.dilations,
                        c.groups,
                        c.activation
                    );
                    if let Some(b) = c.bias {
                        let _ = write!(line, " bias={}", buf(b));
                    }
                    if let Some(z) = c.z {
                        let _ = write!(line, " z={}", buf(z));
                    }
                }
                StepKind::Kernel(k) => {
                    let module = match &k.module {
                        ModuleRef::Family(fam) => fam.name().to_string(),
                        ModuleRef::Generated(g) => format!("generated {g}"),
                    };
                    let args: Vec<String> = k
                        .args
                        .iter()
                        .map(|a| match a {
                            Arg::Buffer(b) => buf(*b),
                            Arg::Null => "null".into(),
                            Arg::I64(v) => v.to_string(),
                            Arg::I32(v) => format!("{v}i32"),
                            Arg::Struct(fields) => {
                                let fs: Vec<String> = fields
                                    .iter()
                                    .map(|f| match f {
                                        Field::Ptr { buffer, offset_bytes: 0 } => buf(*buffer),
                                        Field::Ptr { buffer, offset_bytes } => {
                                            format!("{}+{offset_bytes}", buf(*buffer))
                                        }
                                        Field::Null => "null".into(),
                                        Field::I64(v) => v.to_string(),
                                        Field::F64(v) => format!("{v:?}"),
                                        Field::F32I32(a, b) => format!("{a:?} {b}i32"),
                                    })
                                    .collect();
                                format!("{{{}}}", fs.join(" "))
                            }
                            Arg::F32(v) => format!("{v:?}"),
                            Arg::Elementwise { inputs, output } => {
                                let ins: Vec<String> =
                                    inputs.iter().map(|(b, s)| format!("{}{s:?}", buf(*b))).collect();
                                format!("{} <- [{}]", buf(*output), ins.join(", "))
                            }
                        })
                        .collect();
                    let c = k.config;
                    let _ = write!(
                        line,
                        "launch {}:{} grid {:?} block {:?} smem {} ({})",
                        module,
                        k.kernel,
                        c.grid,
                        c.block,
                        c.shared_bytes,
                        args.join(", ")
                    );
                }
            }
            writeln!(f, "{i}: [{}] {line}", s.node)?;
        }
        let outs: Vec<String> = self.outputs.iter().map(|&b| buf(b)).collect();
        writeln!(f, "outputs {}", outs.join(", "))
    }
}

/// `perm` over `shape` as a batched 2-D transpose, `(batch, rows, cols)`: leading dims kept,
/// then the dims from some `j` on moved before the rest (`[0, 2, 3, 1]` is NCHW to NHWC, a
/// batch of N transposes of C x HW). None for any other permutation, or a trivial one.
fn batched_transpose(shape: &[usize], perm: &[usize]) -> Option<(usize, usize, usize)> {
    let n = perm.len();
    let k = perm.iter().enumerate().take_while(|&(i, &p)| i == p).count();
    if k >= n {
        return None;
    }
    let j = perm[k];
    if j <= k || !perm[k..].iter().copied().eq((j..n).chain(k..j)) {
        return None;
    }
    let prod = |d: &[usize]| d.iter().product::<usize>();
    let (batch, rows, cols) = (prod(&shape[..k]), prod(&shape[k..j]), prod(&shape[j..]));
    (rows > 1 && cols > 1).then_some((batch, rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{TypeInfo, ValueInfo};

    #[test]
    fn attention_struct_matches_the_kernel_signature() {
        let mut g = Graph::new("att");
        let x = g.add_input("qkv", TypeInfo::known(DType::F16, &[2, 5, 3 * 2 * 64]));
        let op = Op::Fused(FusedOp::PackedAttention { num_heads: 2, scale: 0.125 });
        let id =
            g.add_node("att", op, &[Some(x)], vec![ValueInfo::tensor("y", TypeInfo::known(DType::F16, &[2, 5, 128]))]);
        g.add_output("y", Value { node: id, slot: 0 });
        let p = plan(&g).unwrap();
        let StepKind::Kernel(k) = &p.steps[0].kind else { panic!("{p}") };
        let addr = |b: BufferId| 0x1000 * (b as u64 + 1);
        let got = p.param(k, &k.args[0], &addr).unwrap();
        let st = launch::AttnStrides::bshd(2, 5, 64, 384);
        let mut want =
            launch::AttnArgs::new(2, 2, 5, 5, 64, 64, [st, st, st, launch::AttnStrides::bshd(2, 5, 64, 128)], 0.125);
        want.ptrs = [0x1000, 0x1000 + 128 * 2, 0x1000 + 256 * 2, 0x2000, 0, 0];
        assert_eq!(got.0, want.param().0);
        assert_eq!(k.kernel, "attention_r1_d64_f16");
    }

    #[test]
    fn batched_transposes_are_recognized() {
        use super::batched_transpose as bt;
        // NCHW -> NHWC: N transposes of C x HW; and back.
        assert_eq!(bt(&[2, 3, 4, 5], &[0, 2, 3, 1]), Some((2, 3, 20)));
        assert_eq!(bt(&[2, 4, 5, 3], &[0, 3, 1, 2]), Some((2, 20, 3)));
        // A plain 2-D transpose, and a rotation of three dims.
        assert_eq!(bt(&[6, 7], &[1, 0]), Some((1, 6, 7)));
        assert_eq!(bt(&[2, 3, 4], &[2, 0, 1]), Some((1, 6, 4)));
        // Swapping the last two of three keeps the first: a batch of 2 transposes of 3 x 4.
        assert_eq!(bt(&[2, 3, 4], &[0, 2, 1]), Some((2, 3, 4)));
        // Not rotations of the dims after the kept ones.
        assert_eq!(bt(&[2, 3, 4, 5], &[0, 3, 2, 1]), None);
        assert_eq!(bt(&[2, 3, 4, 5], &[1, 0, 3, 2]), None);
        // The identity, and a transpose with a unit side, move nothing worth tiling.
        assert_eq!(bt(&[2, 3], &[0, 1]), None);
        assert_eq!(bt(&[2, 1, 5], &[0, 2, 1]), None);
    }
}
