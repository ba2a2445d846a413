//! Code generation: an [`Expr`] of the fused IR becomes straight-line CUDA C, spliced into the
//! elementwise template (`kernels/elementwise.cu`) to make one kernel per fused node.
//!
//! Every step holds its value in the step's compute type: f32 for f16, bf16 and f32 (so math
//! on half types is done in f32 and rounded once, at the store), f64 for f64, the type itself
//! for integers and bool. A `Cast` to f16 or bf16 rounds where it stands, so casts keep their
//! meaning. An op or type with no CUDA lowering is an error that names it.

use crate::error::{CudaError, Result};
use crate::kernels::{inline_common, KernelFamily};
use kiln_ir::ops::elementwise::{BinaryOp, UnaryOp, VariadicOp};
use kiln_ir::ops::{ElementwiseOp, Expr, ExprNode, InferInput};
use kiln_ir::{DType, TypeInfo};
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// A generated elementwise kernel, ready for NVRTC.
#[derive(Clone, Debug, PartialEq)]
pub struct ElementwiseKernel {
    /// The kernel's name, `fused_<hash>_<dtype>` or `epilogue_<hash>_<dtype>`.
    pub name: String,
    /// The complete source.
    pub source: String,
    /// The generated part alone (the expression and the per-element code), for snapshots.
    pub generated: String,
    /// The element type of each input.
    pub inputs: Vec<DType>,
    /// The output's element type.
    pub output: DType,
    /// Elements per 16-byte vector on the vector path.
    pub vec: usize,
}

/// The storage type of an element type in CUDA C.
pub fn storage_type(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "float",
        DType::F16 => "__half",
        DType::BF16 => "__nv_bfloat16",
        DType::F64 => "double",
        DType::I8 => "signed char",
        DType::U8 => "unsigned char",
        DType::I16 => "short",
        DType::U16 => "unsigned short",
        DType::I32 => "int",
        DType::U32 => "unsigned int",
        DType::I64 => "long long",
        DType::U64 => "unsigned long long",
        DType::Bool => "bool",
        // The small types: one element per byte (see the last section of common.cuh).
        DType::I4 => "signed char",
        DType::U4
        | DType::F8E4M3FN
        | DType::F8E4M3FNUZ
        | DType::F8E5M2
        | DType::F8E5M2FNUZ
        | DType::F4E2M1
        | DType::F8E8M0 => "unsigned char",
    })
}

/// The type a value of `dt` is computed in.
pub fn compute_type(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F16 | DType::BF16 => "float",
        // Every value of the float8, float4 and E8M0 types is an f32.
        d if d.is_low_precision_float() => "float",
        other => storage_type(other)?,
    })
}

/// The short dtype name used in kernel names (`f32`, `f16`, ...).
pub fn dtype_suffix(dt: DType) -> Result<&'static str> {
    use DType::*;
    match dt {
        F32 | F16 | BF16 | F64 | I8 | U8 | I16 | U16 | I32 | U32 | I64 | U64 | Bool | F8E4M3FN | F8E4M3FNUZ
        | F8E5M2 | F8E5M2FNUZ | U4 | I4 | F4E2M1 | F8E8M0 => Ok(dt.name()),
    }
}

fn storage_size(dt: DType) -> usize {
    match dt {
        DType::F64 | DType::I64 | DType::U64 => 8,
        DType::F32 | DType::I32 | DType::U32 => 4,
        DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
        _ => 1,
    }
}

fn is_floating(dt: DType) -> bool {
    matches!(dt, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
}

/// Whether values of `dt` are computed as floats: the IEEE types and the small float types.
fn is_float_valued(dt: DType) -> bool {
    is_floating(dt) || dt.is_low_precision_float()
}

fn is_signed_int(dt: DType) -> bool {
    matches!(dt, DType::I8 | DType::I16 | DType::I32 | DType::I64)
}

fn is_unsigned_int(dt: DType) -> bool {
    matches!(dt, DType::U8 | DType::U16 | DType::U32 | DType::U64)
}

/// Converts a stored value (C expression `x`) to its compute type.
fn load_expr(dt: DType, x: &str) -> String {
    match dt {
        DType::F16 => format!("__half2float({x})"),
        DType::BF16 => format!("__bfloat162float({x})"),
        d if d.is_low_precision_float() => format!("kiln_{}_to_f32({x})", d.name()),
        _ => x.to_string(),
    }
}

/// Converts a computed value (C expression `x`) to the storage type of `dt`.
fn store_expr(dt: DType, x: &str) -> Result<String> {
    Ok(match dt {
        DType::F16 => format!("__float2half_rn({x})"),
        DType::BF16 => format!("__float2bfloat16_rn({x})"),
        DType::Bool => format!("(bool)({x})"),
        // A computed value of a small float type is one of its values already (casts round
        // where they stand), so saturation does not matter here.
        // Exact for the values a cast to the type computes (its decoded values, Inf included);
        // the saturating rounding is the cast's own.
        DType::F8E8M0 => format!("kiln_f8e8m0_store((double)({x}))"),
        d if d.is_low_precision_float() => format!("kiln_{}_from_f64((double)({x}), false)", d.name()),
        other => format!("({})({x})", storage_type(other)?),
    })
}

/// A literal of `dt`'s compute type with the value `v` as that type holds it.
pub fn literal(v: f64, dt: DType) -> Result<String> {
    let f32_lit = |x: f32| {
        if x.is_nan() {
            "__int_as_float(0x7fc00000)".to_string()
        } else if x.is_infinite() {
            format!("{}__int_as_float(0x7f800000)", if x < 0.0 { "-" } else { "" })
        } else {
            format!("{x:?}f")
        }
    };
    Ok(match dt {
        DType::F32 => f32_lit(v as f32),
        DType::F16 => f32_lit(half::f16::from_f64(v).to_f32()),
        DType::BF16 => f32_lit(half::bf16::from_f64(v).to_f32()),
        DType::F64 => {
            if v.is_nan() {
                "__longlong_as_double(0x7ff8000000000000LL)".into()
            } else if v.is_infinite() {
                format!("{}__longlong_as_double(0x7ff0000000000000LL)", if v < 0.0 { "-" } else { "" })
            } else {
                format!("{v:?}")
            }
        }
        DType::Bool => (if v != 0.0 { "true" } else { "false" }).into(),
        DType::I64 => {
            let i = v as i64;
            if i == i64::MIN {
                "(-9223372036854775807LL - 1)".into()
            } else {
                format!("{i}LL")
            }
        }
        DType::U64 => format!("{}ULL", v as u64),
        DType::I32 => {
            let i = v as i32;
            if i == i32::MIN {
                "(-2147483647 - 1)".into()
            } else {
                format!("{i}")
            }
        }
        DType::U32 => format!("{}u", v as u32),
        DType::I8 => format!("(signed char)({})", v as i8),
        DType::U8 => format!("(unsigned char)({})", v as u8),
        DType::I16 => format!("(short)({})", v as i16),
        DType::U16 => format!("(unsigned short)({})", v as u16),
        other => return Err(CudaError::Unsupported(format!("element type {other} has no CUDA kernels"))),
    })
}

/// The CUDA math function `name` for a float compute type: `expf` for f32, `exp` for f64.
fn math(name: &str, dt: DType) -> String {
    if dt == DType::F64 {
        name.to_string()
    } else {
        format!("{name}f")
    }
}

/// One generated expression: a `__device__` function `fname` taking the inputs in their
/// compute types and returning the result in its compute type.
#[derive(Clone, Debug, PartialEq)]
pub struct ExprCode {
    /// The function's source.
    pub code: String,
    /// The result's element type.
    pub output: DType,
}

/// Emits `expr` over inputs of the given element types as a straight-line `__device__`
/// function named `fname`.
pub fn expr_function(expr: &Expr, inputs: &[DType], fname: &str) -> Result<ExprCode> {
    expr_function_with(expr, inputs, fname, ExprMath::Exact)
}

/// How a generated expression computes the f32 steps where speed and the last ulp trade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExprMath {
    /// As the CPU reference does: a division by a constant correctly rounded (`kiln_div_k`),
    /// erf as CUDA's `erff` (2 ulp).
    Exact,
    /// A division by a constant multiplied by the constant's reciprocal (within an ulp of the
    /// quotient, one instruction), and erf as `kiln_erf_fast` (one hardware tanh, within 8e-4).
    /// The INT8 implicit GEMM's epilogues compute so, as TensorRT's INT8 kernels scale by
    /// reciprocals and take GELU's tanh form: their results are rounded to 8 bits (or stored as
    /// f16 or f32 from an i32 product), which such differences move only near a rounding
    /// boundary.
    Int8Epilogue,
}

/// The erf of [`ExprMath::Int8Epilogue`]: `kiln_erf_fast`, or with `KILN_IGEMM_ERF=as` at
/// build time `kiln_erf_as` (Abramowitz and Stegun's, within 1e-6, two special-function
/// operations), to compare the two.
fn int8_erf() -> &'static str {
    if std::env::var("KILN_IGEMM_ERF").is_ok_and(|v| v == "as") {
        "kiln_erf_as("
    } else {
        "kiln_erf_fast("
    }
}

/// [`expr_function`], computing as `math` says.
pub fn expr_function_with(expr: &Expr, inputs: &[DType], fname: &str, math: ExprMath) -> Result<ExprCode> {
    expr.check().map_err(|e| CudaError::Invalid(format!("bad expression {expr}: {e}")))?;
    if expr.num_inputs() > inputs.len() {
        return Err(CudaError::Invalid(format!(
            "expression {expr} reads {} inputs, {} were given",
            expr.num_inputs(),
            inputs.len()
        )));
    }
    let mut body = String::new();
    let mut types: Vec<DType> = Vec::with_capacity(expr.nodes.len());
    for (i, node) in expr.nodes.iter().enumerate() {
        let (dt, value) = match node {
            ExprNode::Input(k) => (inputs[*k], format!("in{k}")),
            ExprNode::Scalar { value, dtype } => (*dtype, literal(*value, *dtype)?),
            ExprNode::Op { op, args } => {
                let arg_types: Vec<DType> = args.iter().map(|&a| types[a]).collect();
                let dt = step_type(op, &arg_types)?;
                let names: Vec<String> = args.iter().map(|a| format!("t{a}")).collect();
                if let Some((f, x)) = rounded_saturating_cast(expr, i, &types) {
                    (dt, format!("{f}(t{x})"))
                } else {
                    match const_divisor(expr, op, args, dt) {
                        Some((_, r)) if math == ExprMath::Int8Epilogue => (dt, format!("{} * {r}", names[0])),
                        Some((c, r)) => (dt, format!("kiln_div_k({}, {c}, {r})", names[0])),
                        // f32 erf (of Erf and of GELU) is `erff` in the exact form.
                        None if math == ExprMath::Int8Epilogue => {
                            (dt, emit_op(op, &names, &arg_types, dt)?.replace("erff(", int8_erf()))
                        }
                        None => (dt, emit_op(op, &names, &arg_types, dt)?),
                    }
                }
            }
        };
        writeln!(body, "    const {} t{i} = {value};", compute_type(dt)?).unwrap_or(());
        types.push(dt);
    }
    let output = *types.last().ok_or_else(|| CudaError::Invalid("empty expression".into()))?;
    let params: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(k, &dt)| Ok(format!("const {} in{k}", compute_type(dt)?)))
        .collect::<Result<_>>()?;
    let mut code = String::new();
    writeln!(code, "// {expr}").unwrap_or(());
    writeln!(code, "__device__ __forceinline__ {} {fname}({}) {{", compute_type(output)?, params.join(", "))
        .unwrap_or(());
    code.push_str(&body);
    writeln!(code, "    return t{};", expr.nodes.len() - 1).unwrap_or(());
    code.push_str("}\n");
    Ok(ExprCode { code, output })
}

/// `Cast<i8>(Clip<-128,127>(Round(x)))` over an f32 `x` at node `at` (a quantization's last
/// three steps), or the u8 form over [0, 255]: the helper that does it in one conversion
/// (`kiln_rni_sat_s8`, `kiln_rni_sat_u8`: round half to even, saturate, NaN to 0, as the three
/// steps give) and the node of `x`. The clip and round nodes are still emitted, unread.
fn rounded_saturating_cast(expr: &Expr, at: usize, types: &[DType]) -> Option<(&'static str, usize)> {
    let (to, x) = quantize_tail(expr, at)?;
    let f = if to == DType::I8 { "kiln_rni_sat_s8" } else { "kiln_rni_sat_u8" };
    (types[x] == DType::F32).then_some((f, x))
}

/// Whether node `at` of `expr` is `Cast<i8>(Clip<-128,127>(Round(x)))` or the u8 form over
/// [0, 255] (how a QuantizeLinear ends): the target type and the node of `x`.
pub fn quantize_tail(expr: &Expr, at: usize) -> Option<(DType, usize)> {
    let op = |i: usize| match &expr.nodes[i] {
        ExprNode::Op { op, args } => Some((op, &args[..])),
        _ => None,
    };
    let (&ElementwiseOp::Cast { to, .. }, &[clip]) = op(at)? else { return None };
    let (lo, hi) = match to {
        DType::I8 => (-128.0, 127.0),
        DType::U8 => (0.0, 255.0),
        _ => return None,
    };
    let (&ElementwiseOp::Clip { min: Some(min), max: Some(max) }, &[round]) = op(clip)? else { return None };
    let (ElementwiseOp::Unary(UnaryOp::Round), &[x]) = op(round)? else { return None };
    (min == lo && max == hi).then_some((to, x))
}

/// An f32 division by a constant (a quantization's scale) as the constant and its reciprocal,
/// both literals, where both are normal floats: `kiln_div_k` divides by them without a
/// division's range check and branch, which in an epilogue keep the rows from interleaving.
fn const_divisor(expr: &Expr, op: &ElementwiseOp, args: &[usize], dt: DType) -> Option<(String, String)> {
    let ElementwiseOp::Binary(BinaryOp::Div) = op else { return None };
    let &[_, d] = args else { return None };
    let ExprNode::Scalar { value, dtype: DType::F32 } = expr.nodes[d] else { return None };
    let c = value as f32;
    let r = const_reciprocal(c)?;
    if dt != DType::F32 {
        return None;
    }
    Some((literal(c as f64, DType::F32).ok()?, literal(r as f64, DType::F32).ok()?))
}

/// The reciprocal `kiln_div_k` divides by `c` with, where `c` and it are normal floats.
pub fn const_reciprocal(c: f32) -> Option<f32> {
    let r = (1.0 / c as f64) as f32;
    (c.is_normal() && r.is_normal()).then_some(r)
}

/// The element type of one step, by the IR's own type rule.
fn step_type(op: &ElementwiseOp, args: &[DType]) -> Result<DType> {
    let tys: Vec<TypeInfo> = args.iter().map(|&d| TypeInfo::known(d, &[])).collect();
    let ins: Vec<Option<InferInput<'_>>> = tys.iter().map(|ty| Some(InferInput { ty, value: None })).collect();
    let out = op.infer(&ins, 1).map_err(|e| CudaError::Invalid(format!("{}: {e}", op.name())))?;
    out.first()
        .and_then(|t| t.dtype)
        .ok_or_else(|| CudaError::Invalid(format!("{}: the output type is unknown", op.name())))
}

fn unsupported(op: &ElementwiseOp, dt: DType) -> CudaError {
    CudaError::Unsupported(format!("{} on {dt} has no CUDA lowering", op.name()))
}

/// The C expression of one op over argument variables `a` of types `at`, giving type `out`.
fn emit_op(op: &ElementwiseOp, a: &[String], at: &[DType], out: DType) -> Result<String> {
    let arity_err = || {
        CudaError::Invalid(format!(
            "{} takes a different number of inputs than {} in the expression",
            op.name(),
            a.len()
        ))
    };
    let ct = compute_type(out)?;
    match op {
        ElementwiseOp::Unary(u) => {
            let [x] = a else { return Err(arity_err()) };
            unary(*u, op, x, at[0])
        }
        ElementwiseOp::Binary(b) => {
            let [x, y] = a else { return Err(arity_err()) };
            binary(*b, op, x, y, at[0], at[1], out)
        }
        ElementwiseOp::Variadic(v) => {
            if a.is_empty() {
                return Err(arity_err());
            }
            let dt = at[0];
            let fold = |f: &dyn Fn(&str, &str) -> String| a[1..].iter().fold(a[0].clone(), |acc, x| f(&acc, x));
            Ok(match v {
                VariadicOp::Sum => format!("({ct})({})", a.join(" + ")),
                VariadicOp::Mean => {
                    let n = literal(a.len() as f64, dt)?;
                    format!("({ct})(({}) / {n})", a.join(" + "))
                }
                // NaN wins, as with numpy's maximum and minimum.
                VariadicOp::Max => fold(&|p, q| format!("(({p} > {q} || {p} != {p}) ? {p} : {q})")),
                VariadicOp::Min => fold(&|p, q| format!("(({p} < {q} || {p} != {p}) ? {p} : {q})")),
            })
        }
        ElementwiseOp::Where => {
            let [c, x, y] = a else { return Err(arity_err()) };
            if at[0] != DType::Bool {
                return Err(CudaError::Invalid(format!("Where: the condition must be bool, found {}", at[0])));
            }
            Ok(format!("({c} ? {x} : {y})"))
        }
        ElementwiseOp::Clip { min, max } => {
            let dt = at[0];
            let x = a.first().ok_or_else(arity_err)?;
            let lo = match (a.get(1), min) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(m)) => Some(literal(*m as f64, dt)?),
                _ => None,
            };
            let hi = match (a.get(2), max) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(m)) => Some(literal(*m as f64, dt)?),
                _ => None,
            };
            // Lower bound first, so that min > max gives max, as the spec asks.
            let mut e = x.clone();
            if let Some(l) = lo {
                e = format!("({e} < {l} ? {l} : {e})");
            }
            if let Some(h) = hi {
                e = format!("({e} > {h} ? {h} : {e})");
            }
            Ok(e)
        }
        ElementwiseOp::Cast { to, saturate } => {
            let x = a.first().ok_or_else(arity_err)?;
            cast(x, at[0], *to, *saturate)
        }
        ElementwiseOp::CastLike { saturate } => {
            let x = a.first().ok_or_else(arity_err)?;
            cast(x, at[0], out, *saturate)
        }
        ElementwiseOp::LegacyBinary { .. } => {
            Err(CudaError::Unsupported("legacy broadcasting has no place in an expression".into()))
        }
    }
}

/// A conversion of `x` (compute type of `from`) to the compute type of `to`, rounding where
/// `to` is narrower than its compute type. `saturate` is ONNX Cast's, for the float8 and E8M0
/// targets. The semantics are those of `Tensor::cast_with`: to and from the small types
/// through f64 (integers through i64, so 4-bit targets wrap).
fn cast(x: &str, from: DType, to: DType, saturate: bool) -> Result<String> {
    // A cast to the same type is the identity, as in `Tensor::cast_with` (E5M2's Inf stays
    // Inf even with `saturate`).
    if from == to {
        return Ok(x.to_string());
    }
    let to_ct = compute_type(to)?;
    compute_type(from)?;
    // The source as f64, or as i64 for the integer-to-4-bit wrap.
    let wide = if from == DType::Bool { format!("({x} ? 1.0 : 0.0)") } else { format!("(double)({x})") };
    let int = || {
        if from == DType::Bool {
            format!("({x} ? 1LL : 0LL)")
        } else if is_float_valued(from) {
            format!("kiln_trunc_i32((double)({x}))")
        } else {
            format!("(long long)({x})")
        }
    };
    Ok(match to {
        DType::F16 => format!("__half2float(__float2half_rn((float)({x})))"),
        DType::BF16 => format!("__bfloat162float(__float2bfloat16_rn((float)({x})))"),
        DType::Bool => format!("({x} != 0)"),
        DType::I4 => format!("kiln_wrap_i4({})", int()),
        DType::U4 => format!("kiln_wrap_u4({})", int()),
        // Rounds where it stands: the computed value is the decoded result.
        d if d.is_low_precision_float() => format!("kiln_{0}_to_f32(kiln_{0}_from_f64({wide}, {saturate}))", d.name()),
        _ if from == DType::Bool => format!("({to_ct})({x} ? 1 : 0)"),
        // Small float to integer: NaN becomes 0 and out-of-range values saturate, as in Rust,
        // with the limits explicit so that no conversion out of range is left to the hardware.
        _ if from.is_low_precision_float() && !is_floating(to) => {
            let bits = storage_size(to) as i32 * 8;
            let (lo, hi) = if is_signed_int(to) {
                (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
            } else {
                (0.0, 2f64.powi(bits) - 1.0)
            };
            format!(
                "({x} != {x} ? ({to_ct})0 : ((double)({x}) < {lo:?} ? ({to_ct})({lo:?}) : ((double)({x}) >= {hi1:?} ? ({to_ct}){hi} : ({to_ct})({x}))))",
                lo = lo,
                hi1 = hi + 1.0,
                hi = int_max_literal(to)?,
            )
        }
        // Float to integer: NaN becomes 0 and out-of-range values saturate, as in Rust.
        _ if is_floating(from) && !is_floating(to) => format!("({x} != {x} ? ({to_ct})0 : ({to_ct})({x}))"),
        _ => format!("({to_ct})({x})"),
    })
}

/// The largest value of an integer type as a C literal.
fn int_max_literal(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::I8 => "127",
        DType::U8 => "255",
        DType::I16 => "32767",
        DType::U16 => "65535",
        DType::I32 => "2147483647",
        DType::U32 => "4294967295u",
        DType::I64 => "9223372036854775807LL",
        DType::U64 => "18446744073709551615ULL",
        other => return Err(CudaError::Unsupported(format!("a cast to {other} has no CUDA lowering"))),
    })
}

fn unary(u: UnaryOp, op: &ElementwiseOp, x: &str, dt: DType) -> Result<String> {
    let ct = compute_type(dt)?;
    let float = is_floating(dt);
    let k = |v: f64| literal(v, if dt == DType::F64 { DType::F64 } else { DType::F32 });
    let f = |name: &str| -> Result<String> {
        if float {
            Ok(format!("{}({x})", math(name, dt)))
        } else {
            Err(unsupported(op, dt))
        }
    };
    let need_float = || if float { Ok(()) } else { Err(unsupported(op, dt)) };
    Ok(match u {
        UnaryOp::Abs if float => f("fabs")?,
        UnaryOp::Abs if is_signed_int(dt) => format!("({ct})({x} < 0 ? -{x} : {x})"),
        UnaryOp::Abs if is_unsigned_int(dt) => x.to_string(),
        UnaryOp::Neg if float => format!("(-{x})"),
        UnaryOp::Neg if is_signed_int(dt) || is_unsigned_int(dt) => format!("({ct})(0 - {x})"),
        UnaryOp::Relu if float || is_signed_int(dt) => format!("({x} < 0 ? ({ct})0 : {x})"),
        UnaryOp::Relu if is_unsigned_int(dt) => x.to_string(),
        UnaryOp::Sign if float => format!("({x} > 0 ? {} : ({x} < 0 ? {} : {x}))", k(1.0)?, k(-1.0)?),
        UnaryOp::Sign if is_signed_int(dt) || is_unsigned_int(dt) => format!("({ct})(({x} > 0) - ({x} < 0))"),
        UnaryOp::Exp => f("exp")?,
        UnaryOp::Log => f("log")?,
        UnaryOp::Sqrt => f("sqrt")?,
        UnaryOp::Floor => f("floor")?,
        UnaryOp::Ceil => f("ceil")?,
        // rint rounds half to even, as numpy's round does.
        UnaryOp::Round => f("rint")?,
        UnaryOp::Erf => f("erf")?,
        UnaryOp::Sin => f("sin")?,
        UnaryOp::Cos => f("cos")?,
        UnaryOp::Tan => f("tan")?,
        UnaryOp::Asin => f("asin")?,
        UnaryOp::Acos => f("acos")?,
        UnaryOp::Atan => f("atan")?,
        UnaryOp::Sinh => f("sinh")?,
        UnaryOp::Cosh => f("cosh")?,
        UnaryOp::Asinh => f("asinh")?,
        UnaryOp::Acosh => f("acosh")?,
        UnaryOp::Atanh => f("atanh")?,
        UnaryOp::Tanh => f("tanh")?,
        UnaryOp::Reciprocal => {
            need_float()?;
            format!("({} / {x})", k(1.0)?)
        }
        UnaryOp::Not if dt == DType::Bool => format!("(!{x})"),
        UnaryOp::BitwiseNot if is_signed_int(dt) || is_unsigned_int(dt) => format!("({ct})(~{x})"),
        UnaryOp::IsNaN if float => format!("({x} != {x})"),
        UnaryOp::IsInf { detect_negative, detect_positive } if float => {
            format!("(isinf({x}) && ({x} > 0 ? {detect_positive} : {detect_negative}))")
        }
        UnaryOp::LeakyRelu { alpha } => {
            need_float()?;
            format!("({x} < 0 ? {} * {x} : {x})", k(alpha as f64)?)
        }
        UnaryOp::Elu { alpha } => {
            need_float()?;
            format!("({x} < 0 ? {} * ({}({x}) - {}) : {x})", k(alpha as f64)?, math("exp", dt), k(1.0)?)
        }
        UnaryOp::Selu { alpha, gamma } => {
            need_float()?;
            let (a, g) = (k(alpha as f64)?, k(gamma as f64)?);
            format!("({x} <= 0 ? {g} * ({a} * {}({x}) - {a}) : {g} * {x})", math("exp", dt))
        }
        UnaryOp::Celu { alpha } => {
            need_float()?;
            let a = k(alpha as f64)?;
            format!(
                "({}({x}, {z}) + {}({a} * ({}({x} / {a}) - {one}), {z}))",
                math("fmax", dt),
                math("fmin", dt),
                math("exp", dt),
                z = k(0.0)?,
                one = k(1.0)?
            )
        }
        UnaryOp::Sigmoid => {
            need_float()?;
            format!("({one} / ({one} + {}(-{x})))", math("exp", dt), one = k(1.0)?)
        }
        UnaryOp::HardSigmoid { alpha, beta } => {
            need_float()?;
            format!(
                "{}({}({} * {x} + {}, {}), {})",
                math("fmax", dt),
                math("fmin", dt),
                k(alpha as f64)?,
                k(beta as f64)?,
                k(1.0)?,
                k(0.0)?
            )
        }
        UnaryOp::HardSwish => {
            need_float()?;
            format!(
                "({x} * {}({}({} * {x} + {}, {}), {}))",
                math("fmax", dt),
                math("fmin", dt),
                k(1.0 / 6.0)?,
                k(0.5)?,
                k(1.0)?,
                k(0.0)?
            )
        }
        // ln(1 + e^x) without overflow: past 20 the result is x.
        UnaryOp::Softplus => {
            need_float()?;
            format!("({x} > {} ? {x} : {}({}({x})))", k(20.0)?, math("log1p", dt), math("exp", dt))
        }
        UnaryOp::Softsign => {
            need_float()?;
            format!("({x} / ({} + {}({x})))", k(1.0)?, math("fabs", dt))
        }
        UnaryOp::ThresholdedRelu { alpha } => {
            need_float()?;
            format!("({x} > {} ? {x} : {})", k(alpha as f64)?, k(0.0)?)
        }
        UnaryOp::Gelu { tanh: false } => {
            need_float()?;
            format!(
                "({} * {x} * ({} + {}({x} * {})))",
                k(0.5)?,
                k(1.0)?,
                math("erf", dt),
                k(std::f64::consts::FRAC_1_SQRT_2)?
            )
        }
        UnaryOp::Gelu { tanh: true } => {
            need_float()?;
            format!(
                "({} * {x} * ({} + {}({} * ({x} + {} * {x} * {x} * {x}))))",
                k(0.5)?,
                k(1.0)?,
                math("tanh", dt),
                k((2.0 / std::f64::consts::PI).sqrt())?,
                k(0.044715)?
            )
        }
        UnaryOp::Mish => {
            need_float()?;
            format!(
                "({x} * {}({x} > {} ? {x} : {}({}({x}))))",
                math("tanh", dt),
                k(20.0)?,
                math("log1p", dt),
                math("exp", dt)
            )
        }
        UnaryOp::Shrink { bias, lambd } => {
            need_float()?;
            let (b, l) = (k(bias as f64)?, k(lambd as f64)?);
            format!("({x} < -{l} ? {x} + {b} : ({x} > {l} ? {x} - {b} : {}))", k(0.0)?)
        }
        UnaryOp::Swish { alpha } => {
            need_float()?;
            format!("({x} / ({} + {}(-{} * {x})))", k(1.0)?, math("exp", dt), k(alpha as f64)?)
        }
        _ => return Err(unsupported(op, dt)),
    })
}

fn binary(b: BinaryOp, op: &ElementwiseOp, x: &str, y: &str, xt: DType, yt: DType, out: DType) -> Result<String> {
    let ct = compute_type(out)?;
    let float = is_floating(xt);
    let int = is_signed_int(xt) || is_unsigned_int(xt);
    let width = storage_size(xt) * 8;
    if !matches!(b, BinaryOp::Pow) && xt != yt {
        return Err(CudaError::Invalid(format!("{}: inputs must have the same type, found {xt} and {yt}", b.name())));
    }
    Ok(match b {
        BinaryOp::Add if float || int => format!("({ct})({x} + {y})"),
        BinaryOp::Sub if float || int => format!("({ct})({x} - {y})"),
        BinaryOp::Mul if float || int => format!("({ct})({x} * {y})"),
        // Integer division by zero is the caller's to rule out; the CPU reference refuses it.
        BinaryOp::Div if float || int => format!("({ct})({x} / {y})"),
        BinaryOp::Pow if float && is_floating(yt) => format!("{}({x}, ({ct})({y}))", math("pow", xt)),
        BinaryOp::Pow if float && !is_floating(yt) && yt != DType::Bool => {
            format!("{}({x}, ({ct})({y}))", math("pow", xt))
        }
        BinaryOp::Pow if int && (is_signed_int(yt) || is_unsigned_int(yt)) => {
            format!("({ct})kiln_ipow((long long)({x}), (long long)({y}))")
        }
        BinaryOp::Pow if int && is_floating(yt) => format!("({ct})pow((double)({x}), (double)({y}))"),
        BinaryOp::Mod { fmod: true } if float => format!("{}({x}, {y})", math("fmod", xt)),
        BinaryOp::Mod { fmod: true } if int => format!("({ct})({x} % {y})"),
        // Python's modulo: the result takes the sign of the divisor.
        BinaryOp::Mod { fmod: false } if float => format!("kiln_pymod({x}, {y})"),
        BinaryOp::Mod { fmod: false } if int => format!("({ct})kiln_pymod({x}, {y})"),
        BinaryOp::BitShift { left } if is_unsigned_int(xt) || is_signed_int(xt) => {
            let sh = if left { "<<" } else { ">>" };
            // Shifting by the bit width or more gives 0, as numpy does.
            format!("(({y}) < 0 || ({y}) >= {width} ? ({ct})0 : ({ct})({x} {sh} {y}))")
        }
        BinaryOp::BitwiseAnd if int => format!("({ct})({x} & {y})"),
        BinaryOp::BitwiseOr if int => format!("({ct})({x} | {y})"),
        BinaryOp::BitwiseXor if int => format!("({ct})({x} ^ {y})"),
        BinaryOp::And if xt == DType::Bool => format!("({x} && {y})"),
        BinaryOp::Or if xt == DType::Bool => format!("({x} || {y})"),
        BinaryOp::Xor if xt == DType::Bool => format!("({x} != {y})"),
        BinaryOp::Equal => format!("({x} == {y})"),
        BinaryOp::Less => format!("({x} < {y})"),
        BinaryOp::LessOrEqual => format!("({x} <= {y})"),
        BinaryOp::Greater => format!("({x} > {y})"),
        BinaryOp::GreaterOrEqual => format!("({x} >= {y})"),
        BinaryOp::PRelu if float || is_signed_int(xt) => format!("({x} < 0 ? ({ct})({x} * {y}) : {x})"),
        _ => return Err(unsupported(op, xt)),
    })
}

/// Helpers the generated code may call, defined once per kernel.
const HELPERS: &str = r#"// Integer power by squaring; negative exponents give 0 unless the base is 1 or -1.
__device__ __forceinline__ long long kiln_ipow(long long b, long long e) {
    if (e < 0) return b == 1 ? 1 : (b == -1 ? ((e & 1) ? -1 : 1) : 0);
    unsigned long long r = 1, p = (unsigned long long)b;
    while (e) { if (e & 1) r *= p; p *= p; e >>= 1; }
    return (long long)r;
}
// The remainder with the sign of the divisor (Python's %).
template <typename T> __device__ __forceinline__ T kiln_pymod(T a, T b) {
    const T r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
__device__ __forceinline__ float kiln_pymod(float a, float b) {
    const float r = fmodf(a, b);
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
__device__ __forceinline__ double kiln_pymod(double a, double b) {
    const double r = fmod(a, b);
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
"#;

/// Generates the kernel of a `FusedElementwise` node with inputs of the given types.
pub fn elementwise_kernel(expr: &Expr, inputs: &[DType]) -> Result<ElementwiseKernel> {
    generate("fused", expr, inputs)
}

/// Generates the epilogue kernel of a matrix op: `in0` is the accumulator (the matrix op's
/// output, of type `acc`), the other inputs are the epilogue's (bias, residual).
pub fn epilogue_kernel(expr: &Expr, acc: DType, extra: &[DType]) -> Result<ElementwiseKernel> {
    let mut inputs = vec![acc];
    inputs.extend_from_slice(extra);
    generate("epilogue", expr, &inputs)
}

/// The template of the INT8 implicit-GEMM kernels (see [`igemm_kernel`]).
const IGEMM_TEMPLATE: &str = include_str!("../../../kernels/igemm.cu");

/// The most epilogue inputs besides the accumulator an INT8 implicit-GEMM kernel takes
/// (`IG_MAX_EXTRA` in `kernels/igemm.cu`).
pub const IGEMM_MAX_EXTRA: usize = 8;

/// How an INT8 implicit-GEMM kernel's epilogue reads one of its inputs, known when the node is
/// planned from the input's strides over the output's (image, row, column, channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpiRead {
    /// Constant along the output's rows (a per-channel scale or bias, or a scalar): each
    /// thread reads its four channels' values once, before the rows.
    Channels,
    /// Laid out as the output (element (r, c) at `r * m + c`): read four channels at a time,
    /// as one vector where the kernel is vectorized.
    Dense,
    /// Any other strides: read element by element, from the row's image and position.
    Strided,
}

/// Threads of a block of the persistent implicit-GEMM kernel with warps of `wn` channels
/// (`PP_THREADS` in `kernels/igemm.cu`): two consumer groups of a one-tile block's threads and
/// a producer warpgroup.
pub fn pp_threads(wn: usize) -> u32 {
    (2 * 64 * 128 / wn + 128) as u32
}

/// The persistent implicit-GEMM kernel's ring: its stages, and the copies its producer keeps
/// in flight before it signals the oldest (`PP_STAGES`, `PP_LAG`): 5 and 3, or
/// `KILN_IGEMM_PP_STAGES` and `KILN_IGEMM_PP_LAG` at build time (2 to 8 stages, a lag of 0 to
/// one less), to compare them.
pub fn pp_depth() -> (u32, u32) {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let stages = var("KILN_IGEMM_PP_STAGES").unwrap_or(5).clamp(2, 8);
    let lag = var("KILN_IGEMM_PP_LAG").unwrap_or(3).min(stages - 1);
    (stages, lag)
}

/// Dynamic shared memory of the persistent implicit-GEMM kernel (`PP_SMEM` in
/// `kernels/igemm.cu`, and 1024 bytes to align it): the stages of 128 rows and 128 channels
/// of 64-byte tiles (see [`pp_depth`]), each consumer group's staging tile of 64 rows by 136
/// ints, and the barriers.
pub fn pp_shared_bytes() -> u32 {
    let (stages, _) = pp_depth();
    stages * (128 + 128) * 64 + 2 * 64 * (128 + 8) * 4 + 8 * (2 * stages + 2) + 1024
}

/// The output channels of the wide implicit-GEMM blocks (`IG_WIDE` in `kernels/igemm.cu`): a
/// plain product's 128 x 192 or 128 x 256 tile, one block an SM, launched with
/// [`wide_shared_bytes`] and [`wide_warp_channels`].
pub const WIDE_BNS: [usize; 2] = [192, 256];

/// A warp's channels in a wide block of `bn` channels: 32 for 192 (twelve warps, three
/// warpgroups of 64 channels), 64 for 256 (eight warps, two warpgroups of 128).
pub fn wide_warp_channels(bn: usize) -> usize {
    if bn == 192 {
        32
    } else {
        64
    }
}

/// The dynamic shared memory of a wide block of `bn` channels: six stages of 128 + `bn` rows of
/// 64 bytes, the epilogue's staging tile of 64 rows by `bn` + 8 ints (within the stages, or
/// after them for a block that takes tile after tile, `looped`), and 1024 bytes to align them.
pub fn wide_shared_bytes(bn: usize, looped: bool) -> u32 {
    let stages = 6 * (128 + bn) * 64;
    let staging = 64 * (bn + 8) * 4;
    (if looped { stages + staging } else { stages.max(staging) } + 1024) as u32
}

/// How an implicit-GEMM kernel's copies read the reduction (`kernels/igemm.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgLoad {
    /// A convolution over a channels-last input whose channels are a multiple of 16: each
    /// 16-byte piece of a row of the reduction is one pixel's channels, or zeros.
    Conv,
    /// A plain product (a matrix product, or a 1x1 convolution of stride 1 without padding):
    /// row `r` of the reduction is the `k` bytes at `r * k`, read without the convolution's
    /// index arithmetic (`KILN_IG_DENSE`).
    Dense,
    /// A convolution over at most 4 channels (an image network's stem), its input channels
    /// padded to 4: each 4-byte word of the reduction is one pixel, and the filter is stored
    /// `[m][k]` with `k` the filter's `kh * kw * 4` bytes rounded up to 16 (`KILN_IG_NARROW`).
    Narrow,
}

/// Whether kernel `name` waits for the work before it on the stream itself, so that the
/// runtime may launch it before that work has finished (programmatic dependent launch, sm_90
/// on): the one-tile implicit-GEMM kernels (`igemm…`, not the persistent `igemm…p…`) copy
/// their first filter tiles, then wait (`ig_pdl_wait`) before they touch anything else.
pub fn waits_for_dependencies(name: &str) -> bool {
    let head = name.split('_').next().unwrap_or("");
    head.strip_prefix("igemm").is_some_and(|rest| !rest.contains('p'))
}

/// The shape of a generated implicit-GEMM kernel (`kernels/igemm.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IgemmBlock {
    /// The block's output channels: 64 or 128.
    pub bn: usize,
    /// A warp's output channels: 32 or 64 (at most `bn`); the block has `64 * bn / wn` threads.
    pub wn: usize,
    /// How the kernel reads the reduction.
    pub load: IgLoad,
    /// The persistent ping-pong kernel (`KILN_IG_PP`, 128 x 128 tiles, so `bn` 128), launched
    /// with [`pp_threads`] threads and [`pp_shared_bytes`] of dynamic shared memory, a block an
    /// SM.
    pub persistent: bool,
    /// Split-K (`KILN_IG_SPLIT`): 1, or the 2, 4 or 8 blocks along the launch's z that share a
    /// tile's reduction as one cluster (sm_90a; elsewhere the first computes it all).
    pub split: usize,
    /// LayerNormalization in the epilogue (`KILN_IG_LN`): 0 for none, else the 2 to 8 blocks
    /// of 128 channels along the launch's y that hold a row's channels, one cluster (sm_90a
    /// only: the plan takes it for sm_90 engines, see `plan::Target`). The kernel then takes
    /// a third argument, `LnArgs`: the scale, bias, epsilon and an optional quantized copy.
    pub ln: usize,
    /// Wide blocks only (`KILN_IG_LOOP`): a block an SM takes tile after tile (tile
    /// `blockIdx.x`, then `gridDim.x` on), its epilogue staged apart so that the next tile's
    /// first copies run during it; launched with `wide_shared_bytes(bn, true)`.
    pub looped: bool,
}

impl IgemmBlock {
    /// A one-tile kernel of `bn` by `wn` channels reading as `load`, not split.
    pub fn new(bn: usize, wn: usize, load: IgLoad) -> Self {
        IgemmBlock { bn, wn, load, persistent: false, split: 1, ln: 0, looped: false }
    }
}

/// Generates an INT8 implicit-GEMM kernel (`kernels/igemm.cu`): an i8 convolution over a
/// channels-last input, or an i8 matrix product, with the epilogue `expr` over the i32
/// accumulator (input 0) and `extra` (the other inputs, each with how it is read: see
/// [`EpiRead`]) applied to each accumulator, shaped as `block` says. With `vec` (the output
/// channels a multiple of 4) the epilogue moves four channels at a time as one vector. The
/// kernel is named `igemm<bn>w<wn>[p][t][d|n][s<split>][l<ln>]_<hash>_<output dtype>`.
pub fn igemm_kernel(
    expr: &Expr,
    extra: &[(DType, EpiRead)],
    block: IgemmBlock,
    vec: bool,
) -> Result<ElementwiseKernel> {
    let IgemmBlock { bn, wn, load, persistent, split, ln, looped } = block;
    let wide = bn > 128;
    if !matches!(bn, 64 | 128 | 192 | 256)
        || !matches!(wn, 32 | 64)
        || wn > bn
        || (wide && (wn != wide_warp_channels(bn) || load != IgLoad::Dense || persistent || split > 1 || ln != 0))
        || (looped && !wide)
        || (persistent && bn != 128)
        || !matches!(split, 1 | 2 | 4 | 8)
        || (persistent && split > 1)
        || (ln != 0 && (!(2..=8).contains(&ln) || bn != 128 || wn != 32 || persistent || split > 1))
    {
        return Err(CudaError::Invalid(format!(
            "an implicit-GEMM block of {bn} channels with warps of {wn}, split {split}, LayerNorm over {ln} blocks (64 or \
             128, and 32 or 64; 128 and unsplit for the persistent kernel; split 1, 2, 4 or 8; a LayerNorm over 2 to \
             8 unsplit blocks of 128 by 32; or a plain product's unsplit wide block of 192 by 32 or 256 by 64)"
        )));
    }
    if extra.len() > IGEMM_MAX_EXTRA {
        return Err(CudaError::Unsupported(format!(
            "an implicit-GEMM epilogue of {} inputs (at most {IGEMM_MAX_EXTRA})",
            extra.len()
        )));
    }
    let mut inputs = vec![DType::I32];
    inputs.extend(extra.iter().map(|&(dt, _)| dt));
    // `KILN_IGEMM_EXACT_MATH=1` at build time keeps the exact forms, to compare the two.
    let math = if std::env::var("KILN_IGEMM_EXACT_MATH").is_ok_and(|v| v == "1") {
        ExprMath::Exact
    } else {
        ExprMath::Int8Epilogue
    };
    let e = expr_function_with(expr, &inputs, "kiln_expr", math)?;
    let out = e.output;
    let mut defs = String::new();
    writeln!(defs, "#define KILN_BN {bn}\n#define KILN_WN {wn}\n#define KILN_NUM_EXTRA {}", extra.len()).unwrap_or(());
    match load {
        IgLoad::Conv => {}
        IgLoad::Dense => defs.push_str("#define KILN_IG_DENSE 1\n"),
        IgLoad::Narrow => defs.push_str("#define KILN_IG_NARROW 1\n"),
    }
    if split > 1 {
        writeln!(defs, "#define KILN_IG_SPLIT {split}").unwrap_or(());
    }
    if ln > 0 {
        writeln!(defs, "#define KILN_IG_LN {ln}").unwrap_or(());
    }
    if wide {
        // The launch's shared memory, which the kernel checks its layout against.
        writeln!(defs, "#define KILN_IG_SMEM_LAUNCH {}", wide_shared_bytes(bn, looped)).unwrap_or(());
    }
    if looped {
        defs.push_str("#define KILN_IG_LOOP 1\n");
    }
    if persistent {
        let (stages, lag) = pp_depth();
        // The launch's shared memory, which the kernel checks its layout against.
        writeln!(
            defs,
            "#define KILN_IG_PP 1\n#define PP_STAGES {stages}\n#define PP_LAG {lag}\n#define PP_SMEM_LAUNCH {}",
            pp_shared_bytes()
        )
        .unwrap_or(());
    }
    if e.code.contains("kiln_ipow") || e.code.contains("kiln_pymod") {
        defs.push_str(HELPERS);
    }
    defs.push_str(&e.code);
    let out_st = storage_type(out)?;
    writeln!(defs, "typedef {out_st} kiln_out_t;").unwrap_or(());
    if ln > 0 && !vec {
        return Err(CudaError::Invalid("a LayerNorm epilogue moves four channels at a time".into()));
    }
    let body = igemm_epilogue(extra, out, vec, ln > 0)?;
    let generated = format!("{defs}\n{body}");
    let hash: String = Sha256::digest(generated.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    let name = format!(
        "igemm{bn}w{wn}{}{}{}{}{}_{hash}_{}",
        if persistent { "p" } else { "" },
        if looped { "t" } else { "" },
        match load {
            IgLoad::Conv => "",
            IgLoad::Dense => "d",
            IgLoad::Narrow => "n",
        },
        if split > 1 { format!("s{split}") } else { String::new() },
        if ln > 0 { format!("l{ln}") } else { String::new() },
        dtype_suffix(out)?
    );
    let defs = format!("#define KILN_KERNEL_NAME {name}\n{defs}");
    let source = inline_common(&IGEMM_TEMPLATE.replacen("/*{{DEFS}}*/", &defs, 1).replacen("/*{{BODY}}*/", &body, 1));
    Ok(ElementwiseKernel { name, source, generated: format!("{defs}\n{body}"), inputs, output: out, vec: 1 })
}

/// The generated part of an implicit-GEMM epilogue, for a thread's four channels `c..c+4`:
/// `EpiPre`, the values read once (inputs read by [`EpiRead::Channels`]), and `kiln_epi_pre`,
/// which reads them; `EpiIn`, a row's values of the other inputs, and `kiln_epi_load`, which
/// reads them at row `r`; and `kiln_epi_row`, which computes the row's four outputs from the
/// accumulators `acc` and stores them if the row is `live` (past the last row it is computed
/// from the last row's inputs and not stored, so that rows need no branch between them).
/// With `vals` (a LayerNorm epilogue) also `kiln_epi_vals`, which gives the four outputs as
/// stored (rounded to the output type) in f32 instead of storing them.
fn igemm_epilogue(extra: &[(DType, EpiRead)], out: DType, vec: bool, vals: bool) -> Result<String> {
    // A vector moves four elements (of 1, 2, 4 or 8 bytes: every storage type is one).
    let vectorizable = |dt: DType| vec && matches!(storage_size(dt), 1 | 2 | 4 | 8);
    let mut pre = String::from("struct EpiPre {\n");
    let mut pre_fn = String::from(
        "__device__ __forceinline__ void kiln_epi_pre(const EpiArgs& e, const IgemmArgs& g, int c, EpiPre& p) {\n",
    );
    let mut rin = String::from("struct EpiIn {\n");
    let mut load = String::from(
        "__device__ __forceinline__ void kiln_epi_load(const EpiArgs& e, const IgemmArgs& g, i64 r, int c, EpiIn& in) {\n",
    );
    if extra.iter().any(|&(_, read)| read == EpiRead::Strided) {
        load.push_str(
            "    const i64 hw = g.oh * g.ow, img = r / hw, pos = r - img * hw, oy = pos / g.ow, ox = pos - oy * g.ow;\n",
        );
    }
    let mut args: Vec<String> = vec!["acc[u]".into()];
    for (k, &(dt, read)) in extra.iter().enumerate() {
        let st = storage_type(dt)?;
        let ptr = format!("((const {st}*)e.in[{k}])");
        if read == EpiRead::Channels {
            let ct = compute_type(dt)?;
            writeln!(pre, "    {ct} x{k}[4];").unwrap_or(());
            let value = load_expr(dt, &format!("{ptr}[(c + u) * e.st[{k}][3]]"));
            writeln!(pre_fn, "    for (int u = 0; u < 4; ++u) p.x{k}[u] = c + u < g.m ? {value} : ({ct})0;")
                .unwrap_or(());
            args.push(format!("p.x{k}[u]"));
            continue;
        }
        writeln!(rin, "    {st} v{k}[4];").unwrap_or(());
        args.push(load_expr(dt, &format!("in.v{k}[u]")));
        if read == EpiRead::Dense && vectorizable(dt) {
            writeln!(load, "    ig_ld4(in.v{k}, {ptr} + r * g.m + c);").unwrap_or(());
            continue;
        }
        let at = if read == EpiRead::Dense {
            "r * g.m + c + u".to_string()
        } else {
            format!("img * e.st[{k}][0] + oy * e.st[{k}][1] + ox * e.st[{k}][2] + (c + u) * e.st[{k}][3]")
        };
        writeln!(load, "    for (int u = 0; u < 4; ++u) in.v{k}[u] = c + u < g.m ? {ptr}[{at}] : ({st})0;")
            .unwrap_or(());
    }
    // An empty struct would still take a byte; a named one keeps every compiler quiet.
    pre.push_str("    char unused;\n};\n");
    rin.push_str("    char unused;\n};\n");
    pre_fn.push_str("}\n");
    load.push_str("}\n");
    let mut row = String::from(
        "__device__ __forceinline__ void kiln_epi_row(const EpiArgs& e, const IgemmArgs& g, const EpiPre& p,\n\
         \x20                                            const EpiIn& in, i64 r, int c, const int (&acc)[4], void* out,\n\
         \x20                                            bool live) {\n",
    );
    writeln!(row, "    kiln_out_t o[4];").unwrap_or(());
    writeln!(
        row,
        "#pragma unroll\n    for (int u = 0; u < 4; ++u) o[u] = {};",
        store_expr(out, &format!("kiln_expr({})", args.join(", ")))?
    )
    .unwrap_or(());
    if vectorizable(out) {
        row.push_str("    if (live) ig_st4((kiln_out_t*)out + r * g.m + c, o);\n");
    } else {
        row.push_str(
            "    for (int u = 0; u < 4 && c + u < g.m; ++u)\n        if (live) ((kiln_out_t*)out)[r * g.m + c + u] = o[u];\n",
        );
    }
    row.push_str("}\n");
    if vals {
        row.push_str(
            "__device__ __forceinline__ void kiln_epi_vals(const EpiArgs& e, const IgemmArgs& g, const EpiPre& p,\n\
             \x20                                             const EpiIn& in, const int (&acc)[4], float (&y)[4]) {\n",
        );
        writeln!(
            row,
            "#pragma unroll\n    for (int u = 0; u < 4; ++u) y[u] = to_f32((kiln_out_t)({}));\n}}",
            store_expr(out, &format!("kiln_expr({})", args.join(", ")))?
        )
        .unwrap_or(());
    }
    Ok(format!("{pre}{pre_fn}{rin}{load}{row}"))
}

fn generate(prefix: &str, expr: &Expr, inputs: &[DType]) -> Result<ElementwiseKernel> {
    if inputs.is_empty() {
        return Err(CudaError::Invalid(format!("{prefix} kernel for {expr} has no inputs")));
    }
    let e = expr_function(expr, inputs, "kiln_expr")?;
    let out = e.output;
    let min_size = inputs.iter().chain(std::iter::once(&out)).map(|&d| storage_size(d)).min().unwrap_or(1);
    let vec = 16 / min_size;
    let mut defs = String::new();
    writeln!(defs, "#define KILN_NUM_INPUTS {}", inputs.len()).unwrap_or(());
    writeln!(defs, "#define KILN_VEC {vec}").unwrap_or(());
    // The helpers only where the expression calls them, so most kernels stay short.
    if e.code.contains("kiln_ipow") || e.code.contains("kiln_pymod") {
        defs.push_str(HELPERS);
    }
    defs.push_str(&e.code);

    let mut body = String::new();
    // One element on the strided path.
    // `I` is the index type the host chose: unsigned int where everything fits, else i64.
    body.push_str("template <typename I>\n__device__ __forceinline__ void kiln_element(const ElemArgs& a, I i) {\n");
    body.push_str("    I off[KILN_NUM_INPUTS];\n    kiln_offsets<I>(a, i, off);\n");
    let mut args = vec![];
    for (k, &dt) in inputs.iter().enumerate() {
        let st = storage_type(dt)?;
        let load = load_expr(dt, &format!("((const {st}*)a.in[{k}])[off[{k}]]"));
        writeln!(body, "    const {} x{k} = {load};", compute_type(dt)?).unwrap_or(());
        args.push(format!("x{k}"));
    }
    let out_st = storage_type(out)?;
    writeln!(body, "    (({out_st}*)a.out)[i] = {};", store_expr(out, &format!("kiln_expr({})", args.join(", ")))?)
        .unwrap_or(());
    body.push_str("}\n");
    // KILN_VEC elements on the vector path, each tensor moved in 16-byte pieces.
    for (k, &dt) in inputs.iter().enumerate() {
        writeln!(body, "struct __align__(16) kiln_vec{k} {{ {} v[KILN_VEC]; }};", storage_type(dt)?).unwrap_or(());
    }
    writeln!(body, "struct __align__(16) kiln_vec_out {{ {out_st} v[KILN_VEC]; }};").unwrap_or(());
    // `col` is `v` modulo the vectors in a row, kept by the loop (see the template).
    body.push_str(
        "template <typename I>\n__device__ __forceinline__ void kiln_vector(const ElemArgs& a, I v, I col) {\n",
    );
    for (k, &dt) in inputs.iter().enumerate() {
        let st = storage_type(dt)?;
        writeln!(body, "    kiln_vec{k} r{k};").unwrap_or(());
        writeln!(
            body,
            "    if ((a.scalar_mask >> {k}) & 1) {{ const {st} s = *(const {st}*)a.in[{k}]; \
             for (int j = 0; j < KILN_VEC; ++j) r{k}.v[j] = s; }}\n    \
             else if ((a.row_mask >> {k}) & 1) r{k} = ((const kiln_vec{k}*)a.in[{k}])[col];\n    \
             else r{k} = ((const kiln_vec{k}*)a.in[{k}])[v];"
        )
        .unwrap_or(());
    }
    body.push_str("    kiln_vec_out o;\n#pragma unroll\n    for (int j = 0; j < KILN_VEC; ++j)\n");
    let vargs: Vec<String> = inputs.iter().enumerate().map(|(k, &dt)| load_expr(dt, &format!("r{k}.v[j]"))).collect();
    writeln!(body, "        o.v[j] = {};", store_expr(out, &format!("kiln_expr({})", vargs.join(", ")))?).unwrap_or(());
    body.push_str("    ((kiln_vec_out*)a.out)[v] = o;\n}\n");

    let generated = format!("{defs}\n{body}");
    let hash: String = Sha256::digest(generated.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    let name = format!("{prefix}_{hash}_{}", dtype_suffix(out)?);
    let defs = format!("#define KILN_KERNEL_NAME {name}\n{defs}");
    let template = KernelFamily::Elementwise.raw_source();
    let source = inline_common(&template.replacen("/*{{DEFS}}*/", &defs, 1).replacen("/*{{BODY}}*/", &body, 1));
    Ok(ElementwiseKernel {
        name,
        source,
        generated: format!("{defs}\n{body}"),
        inputs: inputs.to_vec(),
        output: out,
        vec,
    })
}

/// How a generated kernel reads its inputs over one output shape, decided from the shapes and
/// strides alone: the collapsed dims and strides, and which fast paths they allow. The pointers'
/// alignment, known only at launch, decides the rest (see [`elementwise_args`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ElemLayout {
    /// The output's dims after [`collapse`].
    pub dims: Vec<usize>,
    /// Each input's strides over `dims`.
    pub strides: Vec<Vec<i64>>,
    /// Elements in the output.
    pub n: usize,
    /// Bit k: input k is a single element.
    pub scalar_mask: i32,
    /// Bit k: input k is one row of `row_len` elements repeated for every row of the output.
    pub row_mask: i32,
    /// The row length of the row inputs: the last collapsed dim, a multiple of the kernel's
    /// vector width; the vector width itself where no input is a row.
    pub row_len: usize,
    /// Every input is a single element, a row, or read in full in the output's order, so the
    /// vector path may be taken if every pointer is 16-byte aligned.
    pub vector: bool,
    /// `n` and every input's largest offset are below 2^31: 32-bit indices suffice.
    pub index32: bool,
}

/// The fast paths [`elementwise_args`] may choose, all on by default; tests turn one off to
/// exercise the fallback (the strided path, 64-bit indices) on small tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElemPaths {
    /// The vector path, where the layout and the pointers allow it.
    pub vector: bool,
    /// 32-bit index math, where every index fits.
    pub index32: bool,
}

impl Default for ElemPaths {
    fn default() -> ElemPaths {
        ElemPaths { vector: true, index32: true }
    }
}

/// The layout of `kernel` over an output of `out_shape` with input `k` read at `strides[k]`.
pub fn elementwise_layout(kernel: &ElementwiseKernel, out_shape: &[usize], strides: &[Vec<i64>]) -> Result<ElemLayout> {
    let n_in = kernel.inputs.len();
    if strides.len() != n_in {
        return Err(CudaError::Invalid(format!(
            "{} takes {n_in} inputs, got {} stride lists",
            kernel.name,
            strides.len()
        )));
    }
    if let Some(s) = strides.iter().flatten().find(|&&s| s < 0) {
        return Err(CudaError::Invalid(format!("{}: negative stride {s}", kernel.name)));
    }
    // Dims of size 1 carry nothing; merge neighbours that every input reads alike.
    let (dims, strides) = collapse(out_shape, strides)?;
    if dims.len() > MAX_RANK {
        return Err(CudaError::Invalid(format!(
            "{}: rank {} after collapsing exceeds {MAX_RANK}",
            kernel.name,
            dims.len()
        )));
    }
    let n: usize = out_shape.iter().product();
    // One bit per input; past 30 inputs the vector path is off and the masks unused.
    let masked = n_in <= 30;
    let mask = |f: &dyn Fn(&[i64]) -> bool| -> i32 {
        if masked {
            (0..n_in).filter(|&k| f(&strides[k])).fold(0, |m, k| m | (1 << k))
        } else {
            0
        }
    };
    let scalar_mask = mask(&|s| s.iter().all(|&x| x == 0));
    // Contiguous: the strides are the row-major strides of the output.
    let mut contiguous_strides = vec![0i64; dims.len()];
    let mut acc = 1i64;
    for d in (0..dims.len()).rev() {
        contiguous_strides[d] = acc;
        acc = acc.saturating_mul(dims[d] as i64);
    }
    // A row: read along the last dim only, a whole number of vectors long.
    let last = dims.last().copied().unwrap_or(1);
    let row_ok = dims.len() >= 2 && last > 0 && last.is_multiple_of(kernel.vec);
    let row_mask = mask(&|s| row_ok && s.last() == Some(&1) && s[..s.len() - 1].iter().all(|&x| x == 0));
    let vector = masked
        && (0..n_in)
            .all(|k| (scalar_mask >> k) & 1 == 1 || (row_mask >> k) & 1 == 1 || strides[k] == contiguous_strides);
    // The largest offset of each input, at the output's last coordinate.
    const LIMIT: i128 = 1 << 31;
    let index32 = (n as i128) < LIMIT
        && strides.iter().all(|s| {
            let top: i128 = dims.iter().zip(s).map(|(&d, &st)| (d as i128 - 1) * st as i128).sum();
            top < LIMIT
        });
    Ok(ElemLayout {
        row_len: if row_mask != 0 { last } else { kernel.vec },
        dims,
        strides,
        n,
        scalar_mask,
        row_mask,
        vector,
        index32,
    })
}

/// The launch of `kernel` over `out_shape`, sized for the path its layout allows: a vector of
/// `kernel.vec` elements per thread where the vector path may be taken, else an element per
/// thread, capped at [`launch::ELEMENTWISE_MAX_BLOCKS`](crate::launch::ELEMENTWISE_MAX_BLOCKS)
/// blocks. Any grid is correct (the kernel's loops are grid-stride), so a launch whose pointers
/// turn out misaligned still covers every element, with fewer threads than it could use.
pub fn elementwise_launch(
    kernel: &ElementwiseKernel,
    out_shape: &[usize],
    strides: &[Vec<i64>],
) -> Result<crate::driver::LaunchConfig> {
    let l = elementwise_layout(kernel, out_shape, strides)?;
    // The vector loop's threads also take the scalar tail (fewer than `vec` elements).
    let work = if l.vector { (l.n / kernel.vec).max(1) } else { l.n };
    Ok(crate::launch::elementwise(work as u64))
}

/// The bytes of the `ElemArgs` kernel parameter for given buffers and a broadcast.
///
/// `out_shape` is the output's shape; `strides[k]` the strides in elements of input `k` over
/// those dims (0 where broadcast), `ptrs` the inputs' device addresses.
pub fn elementwise_args(
    kernel: &ElementwiseKernel,
    ptrs: &[u64],
    out_ptr: u64,
    out_shape: &[usize],
    strides: &[Vec<i64>],
) -> Result<Vec<u8>> {
    elementwise_args_with(kernel, ptrs, out_ptr, out_shape, strides, ElemPaths::default())
}

/// [`elementwise_args`] with only the fast paths `paths` allows.
pub fn elementwise_args_with(
    kernel: &ElementwiseKernel,
    ptrs: &[u64],
    out_ptr: u64,
    out_shape: &[usize],
    strides: &[Vec<i64>],
    paths: ElemPaths,
) -> Result<Vec<u8>> {
    let n_in = kernel.inputs.len();
    if ptrs.len() != n_in || strides.len() != n_in {
        return Err(CudaError::Invalid(format!(
            "{} takes {n_in} inputs, got {} pointers and {} stride lists",
            kernel.name,
            ptrs.len(),
            strides.len()
        )));
    }
    let l = elementwise_layout(kernel, out_shape, strides)?;
    // A scalar is read one element at a time, so only the others need 16-byte alignment.
    let vec_ok = paths.vector
        && l.vector
        && (0..n_in).all(|k| (l.scalar_mask >> k) & 1 == 1 || ptrs[k].is_multiple_of(16))
        && out_ptr.is_multiple_of(16);
    let index32 = paths.index32 && l.index32;
    let mut b = Vec::new();
    for p in ptrs {
        b.extend(p.to_ne_bytes());
    }
    b.extend(out_ptr.to_ne_bytes());
    b.extend((l.n as i64).to_ne_bytes());
    for d in 0..MAX_RANK {
        b.extend((*l.dims.get(d).unwrap_or(&1) as i64).to_ne_bytes());
    }
    for s in &l.strides {
        for d in 0..MAX_RANK {
            b.extend(s.get(d).copied().unwrap_or(0).to_ne_bytes());
        }
    }
    b.extend((l.dims.len() as i32).to_ne_bytes());
    b.extend((vec_ok as i32).to_ne_bytes());
    b.extend(l.scalar_mask.to_ne_bytes());
    b.extend(l.row_mask.to_ne_bytes());
    b.extend((l.row_len as i64).to_ne_bytes());
    b.extend((index32 as i32).to_ne_bytes());
    b.extend(0i32.to_ne_bytes());
    Ok(b)
}

/// The largest rank the strided kernels take (`KILN_MAX_RANK` in `common.cuh`).
pub const MAX_RANK: usize = 8;

/// Drops dims of size 1 and merges neighbouring dims that every input reads contiguously
/// across (or broadcasts across), so a broadcast over many dims fits [`MAX_RANK`].
pub fn collapse(shape: &[usize], strides: &[Vec<i64>]) -> Result<(Vec<usize>, Vec<Vec<i64>>)> {
    if let Some(s) = strides.iter().find(|s| s.len() != shape.len()) {
        return Err(CudaError::Invalid(format!("strides {s:?} do not match the output rank {}", shape.len())));
    }
    let mut dims: Vec<usize> = vec![];
    let mut out: Vec<Vec<i64>> = vec![vec![]; strides.len()];
    for (d, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let mergeable = !dims.is_empty()
            && strides.iter().zip(&out).all(|(s, o)| {
                let prev = *o.last().unwrap_or(&0);
                prev == s[d] * size as i64
            });
        if mergeable {
            let last = dims.len() - 1;
            dims[last] *= size;
            for (o, s) in out.iter_mut().zip(strides) {
                let l = o.len() - 1;
                o[l] = s[d];
            }
        } else {
            dims.push(size);
            for (o, s) in out.iter_mut().zip(strides) {
                o.push(s[d]);
            }
        }
    }
    Ok((dims, out))
}

/// The strides of a row-major tensor of shape `shape` read broadcast over `out` (numpy rules:
/// trailing dims line up; 0 where the tensor has size 1 or lacks the dim).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Result<Vec<i64>> {
    if shape.len() > out.len() {
        return Err(CudaError::Invalid(format!("shape {shape:?} does not broadcast to {out:?}")));
    }
    let lead = out.len() - shape.len();
    let mut strides = vec![0i64; out.len()];
    let mut acc = 1i64;
    for d in (0..shape.len()).rev() {
        let (s, o) = (shape[d], out[lead + d]);
        if s != 1 && s != o {
            return Err(CudaError::Invalid(format!("shape {shape:?} does not broadcast to {out:?}")));
        }
        strides[lead + d] = if s == 1 { 0 } else { acc };
        acc *= s as i64;
    }
    Ok(strides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: ElementwiseOp, args: &[usize]) -> ExprNode {
        ExprNode::Op { op, args: args.to_vec() }
    }

    /// The one-tile implicit-GEMM kernels, split or not, wait for the work before them; the
    /// persistent kernel and every other family do not.
    #[test]
    fn only_one_tile_implicit_gemms_launch_dependent() {
        let q = Expr {
            nodes: vec![ExprNode::Input(0), node(ElementwiseOp::Cast { to: DType::F32, saturate: true }, &[0])],
        };
        for (block, waits) in [
            (IgemmBlock::new(64, 32, IgLoad::Conv), true),
            (IgemmBlock { split: 4, ..IgemmBlock::new(64, 32, IgLoad::Dense) }, true),
            (IgemmBlock::new(128, 32, IgLoad::Narrow), true),
            (IgemmBlock { persistent: true, ..IgemmBlock::new(128, 64, IgLoad::Dense) }, false),
        ] {
            let k = igemm_kernel(&q, &[], block, true).unwrap();
            assert_eq!(waits_for_dependencies(&k.name), waits, "{}", k.name);
        }
        for name in ["quantize_nhwc4_f32_i8", "maxpool2d_nhwc16_i8", "attention_mma_q_d64_f16", "fused_0a1b_i8"] {
            assert!(!waits_for_dependencies(name), "{name}");
        }
    }

    /// A quantization's round, clip to the target's range and cast become one saturating
    /// conversion, for i8 and u8; another clip range keeps the three steps.
    #[test]
    fn quantization_tails_are_one_conversion() {
        let quantize = |to: DType, lo: f32, hi: f32| Expr {
            nodes: vec![
                ExprNode::Input(0),
                ExprNode::Scalar { value: 0.5, dtype: DType::F32 },
                node(ElementwiseOp::Binary(BinaryOp::Div), &[0, 1]),
                node(ElementwiseOp::Unary(UnaryOp::Round), &[2]),
                node(ElementwiseOp::Clip { min: Some(lo), max: Some(hi) }, &[3]),
                node(ElementwiseOp::Cast { to, saturate: true }, &[4]),
            ],
        };
        let code = |e: &Expr| expr_function(e, &[DType::F32], "f").expect("generates").code;
        assert!(code(&quantize(DType::I8, -128.0, 127.0)).contains("const signed char t5 = kiln_rni_sat_s8(t2);"));
        assert!(code(&quantize(DType::U8, 0.0, 255.0)).contains("kiln_rni_sat_u8(t2)"));
        let narrow = code(&quantize(DType::I8, -127.0, 127.0));
        assert!(!narrow.contains("kiln_rni_sat") && narrow.contains("rintf"), "{narrow}");
    }

    /// The one place these tests call the generator: the error of lowering `e` over `inputs`.
    fn error_of(e: &Expr, inputs: &[DType]) -> String {
        match elementwise_kernel(e, inputs) {
            Ok(k) => panic!("{e} over {inputs:?} lowered to {}", k.name),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn unsupported_ops_and_types_are_named() {
        let not_f32 = Expr::op(ElementwiseOp::Unary(UnaryOp::BitwiseNot), 1);
        assert_eq!(error_of(&not_f32, &[DType::F32]), "BitwiseNot on f32 has no CUDA lowering");
        let exp_int = Expr::op(ElementwiseOp::Unary(UnaryOp::Exp), 1);
        assert_eq!(error_of(&exp_int, &[DType::I32]), "Exp on i32 has no CUDA lowering");
        let add = Expr::op(ElementwiseOp::Binary(BinaryOp::Add), 2);
        // The small types move and convert, but take no part in arithmetic.
        assert_eq!(error_of(&add, &[DType::F8E4M3FN, DType::F8E4M3FN]), "Add on f8e4m3fn has no CUDA lowering");
        assert_eq!(error_of(&add, &[DType::I4, DType::I4]), "Add on i4 has no CUDA lowering");
        assert_eq!(error_of(&add, &[DType::F32, DType::F16]), "Add: inputs must have the same type, found f32 and f16");
        let legacy = Expr::op(ElementwiseOp::LegacyBinary { op: BinaryOp::Add, axis: 1 }, 2);
        assert!(error_of(&legacy, &[DType::F32, DType::F32]).contains("legacy broadcasting"));
        assert!(error_of(&add, &[DType::F32]).contains("reads 2 inputs, 1 were given"));
        let forward = Expr { nodes: vec![node(ElementwiseOp::Unary(UnaryOp::Relu), &[1]), ExprNode::Input(0)] };
        assert!(error_of(&forward, &[DType::F32]).contains("does not come before it"));
        let cond = Expr::op(ElementwiseOp::Where, 3);
        assert!(error_of(&cond, &[DType::F32; 3]).contains("condition must be bool"));
        let bits = Expr::op(ElementwiseOp::Binary(BinaryOp::BitwiseAnd), 2);
        assert_eq!(error_of(&bits, &[DType::F16, DType::F16]), "BitwiseAnd on f16 has no CUDA lowering");
    }

    #[test]
    fn types_follow_the_ir() {
        // A comparison outputs bool; a cast rounds to f16 where it stands.
        let e = Expr {
            nodes: vec![
                ExprNode::Input(0),
                node(ElementwiseOp::Cast { to: DType::F16, saturate: true }, &[0]),
                ExprNode::Scalar { value: 0.1, dtype: DType::F16 },
                node(ElementwiseOp::Binary(BinaryOp::Less), &[1, 2]),
            ],
        };
        let k = elementwise_kernel(&e, &[DType::F32]).unwrap();
        assert_eq!(k.output, DType::Bool);
        assert_eq!(k.vec, 16, "bool output moves 16 elements per 16 bytes");
        assert!(k.name.starts_with("fused_") && k.name.ends_with("_bool"), "{}", k.name);
        assert!(k.generated.contains("__half2float(__float2half_rn((float)(t0)))"));
        // 0.1 as f16 is 0.0999755859375, which is what the kernel must compare with.
        assert!(k.generated.contains("0.099975586f"), "{}", k.generated);
    }

    #[test]
    fn literals_keep_their_type() {
        assert_eq!(literal(3.0, DType::F32).unwrap(), "3.0f");
        assert_eq!(literal(1e-5, DType::F32).unwrap(), "1e-5f");
        assert_eq!(literal(f64::NEG_INFINITY, DType::F16).unwrap(), "-__int_as_float(0x7f800000)");
        assert_eq!(literal(f64::NAN, DType::F64).unwrap(), "__longlong_as_double(0x7ff8000000000000LL)");
        assert_eq!(literal(i64::MIN as f64, DType::I64).unwrap(), "(-9223372036854775807LL - 1)");
        assert_eq!(literal(2.0, DType::Bool).unwrap(), "true");
        assert_eq!(literal(300.0, DType::U8).unwrap(), "(unsigned char)(255)");
        assert!(literal(1.0, DType::F4E2M1).is_err());
    }

    #[test]
    fn collapse_merges_what_every_input_reads_alike() {
        // [2, 3, 4] + [3, 1]: input 1 is broadcast over dims 0 and 2 but read along dim 1, so
        // no two neighbouring dims are read alike by both inputs and nothing merges.
        let out = [2, 3, 4];
        let a = broadcast_strides(&[2, 3, 4], &out).unwrap();
        let b = broadcast_strides(&[3, 1], &out).unwrap();
        assert_eq!(b, vec![0, 1, 0]);
        let (dims, s) = collapse(&out, &[a, b]).unwrap();
        assert_eq!(dims, vec![2, 3, 4]);
        assert_eq!(s, vec![vec![12, 4, 1], vec![0, 1, 0]]);
        // Same shapes collapse to one dim; size-1 dims vanish.
        let c = broadcast_strides(&[2, 1, 3, 4], &[2, 1, 3, 4]).unwrap();
        let (dims, s) = collapse(&[2, 1, 3, 4], &[c.clone(), c]).unwrap();
        assert_eq!(dims, vec![24]);
        assert_eq!(s, vec![vec![1], vec![1]]);
        assert!(broadcast_strides(&[3], &[2, 4]).is_err());
        assert!(collapse(&[2, 3], &[vec![1]]).is_err());
    }

    #[test]
    fn args_choose_the_vector_path_only_when_safe() {
        let k =
            elementwise_kernel(&Expr::op(ElementwiseOp::Binary(BinaryOp::Add), 2), &[DType::F32, DType::F32]).unwrap();
        let field = |b: &[u8], at: usize| i32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        // ptrs (2) + out + n + dims (8) + strides (2 x 8) = 28 eight-byte words, then rank, vec, mask.
        let words = 8 * (2 + 1 + 1 + 8 + 16);
        let full = vec![4i64, 1];
        let scalar = vec![0i64, 0];
        let b = elementwise_args(&k, &[256, 512], 1024, &[3, 4], &[full.clone(), scalar.clone()]).unwrap();
        assert_eq!(b.len(), words + 32);
        assert_eq!(field(&b, words + 24), 1, "32-bit indices");
        assert_eq!((field(&b, words), field(&b, words + 4), field(&b, words + 8)), (1, 1, 0b10));
        // A misaligned pointer or a transposed read takes the strided path.
        let b = elementwise_args(&k, &[260, 512], 1024, &[3, 4], &[full.clone(), scalar]).unwrap();
        assert_eq!(field(&b, words + 4), 0);
        let b = elementwise_args(&k, &[256, 512], 1024, &[3, 4], &[full.clone(), vec![1, 3]]).unwrap();
        assert_eq!((field(&b, words), field(&b, words + 4)), (2, 0));
        // A misaligned scalar does not matter: it is read one element at a time.
        let b = elementwise_args(&k, &[256, 514], 1024, &[3, 4], &[full.clone(), vec![0, 0]]).unwrap();
        assert_eq!(field(&b, words + 4), 1);
        // A bias row of 4 (one f32 vector) over [3, 4] keeps the vector path; a row of 6 does
        // not (a vector would straddle two rows).
        let b = elementwise_args(&k, &[256, 512], 1024, &[3, 4], &[full, vec![0, 1]]).unwrap();
        assert_eq!((field(&b, words + 4), field(&b, words + 8), field(&b, words + 12)), (1, 0, 0b10));
        assert_eq!(i64::from_ne_bytes(b[words + 16..words + 24].try_into().unwrap()), 4);
        let b = elementwise_args(&k, &[256, 512], 1024, &[3, 6], &[vec![6, 1], vec![0, 1]]).unwrap();
        assert_eq!((field(&b, words + 4), field(&b, words + 12)), (0, 0));
        assert!(elementwise_args(&k, &[256], 1024, &[3, 4], &[vec![4, 1]]).is_err());
        // Forty inputs: the strided path, and no overflow of the scalar mask.
        let sum = Expr::op(ElementwiseOp::Variadic(VariadicOp::Sum), 40);
        let k = elementwise_kernel(&sum, &[DType::F32; 40]).unwrap();
        let b = elementwise_args(&k, &[256; 40], 1024, &[3, 4], &vec![vec![0, 0]; 40]).unwrap();
        let at = 8 * (40 + 1 + 1 + 8 + 40 * 8);
        assert_eq!(field(&b, at + 4), 0);
    }

    fn add_f16() -> ElementwiseKernel {
        elementwise_kernel(&Expr::op(ElementwiseOp::Binary(BinaryOp::Add), 2), &[DType::F16, DType::F16]).unwrap()
    }

    #[test]
    fn a_bias_row_takes_the_vector_path_with_a_grid_of_vectors() {
        // BERT-base's FFN epilogue at batch 32: [32, 128, 3072] f16 plus a [3072] bias.
        let k = add_f16();
        let out = [32, 128, 3072];
        let strides = [broadcast_strides(&out, &out).unwrap(), broadcast_strides(&[3072], &out).unwrap()];
        let l = elementwise_layout(&k, &out, &strides).unwrap();
        assert_eq!(l.dims, vec![4096, 3072]);
        assert_eq!((l.vector, l.index32, l.scalar_mask, l.row_mask, l.row_len), (true, true, 0, 0b10, 3072));
        // One vector of 8 per thread: 12582912 / 8 / 256 blocks, not one thread per element.
        let cfg = elementwise_launch(&k, &out, &strides).unwrap();
        assert_eq!((cfg.grid, cfg.block), ((6144, 1, 1), (256, 1, 1)));
        // Larger outputs stop at the cap and loop.
        let big = [64, 1024, 3072];
        let strides = [broadcast_strides(&big, &big).unwrap(), broadcast_strides(&[3072], &big).unwrap()];
        let cfg = elementwise_launch(&k, &big, &strides).unwrap();
        assert_eq!(cfg.grid.0 as u64, crate::launch::ELEMENTWISE_MAX_BLOCKS);
        // A row that is not a whole number of vectors, or a transposed read: an element per thread.
        let odd = [5, 12];
        let strides = [broadcast_strides(&odd, &odd).unwrap(), broadcast_strides(&[12], &odd).unwrap()];
        let l = elementwise_layout(&k, &odd, &strides).unwrap();
        assert_eq!((l.vector, l.row_mask, l.row_len), (false, 0, 8));
        let t = [4096, 512];
        let cfg = elementwise_launch(&k, &t, &[vec![512, 1], vec![1, 4096]]).unwrap();
        assert_eq!(cfg.grid.0, 4096 * 512 / 256);
    }

    #[test]
    fn the_scalar_tail_is_covered_by_the_vector_grid() {
        let k = add_f16();
        // 4099 = 512 vectors of 8 and 3 elements: two blocks, whose first threads take the tail.
        let strides = [vec![1], vec![0]];
        let l = elementwise_layout(&k, &[4099], &strides).unwrap();
        assert!(l.vector && l.index32);
        assert_eq!((l.scalar_mask, l.row_mask, l.row_len), (0b10, 0, 8), "no row: the row is one vector");
        assert_eq!(elementwise_launch(&k, &[4099], &strides).unwrap().grid.0, 2);
        // Fewer elements than a vector: one block.
        assert_eq!(elementwise_launch(&k, &[5], &strides).unwrap().grid.0, 1);
        assert_eq!(elementwise_launch(&k, &[0], &strides).unwrap().grid.0, 1);
    }

    #[test]
    fn index_width_follows_the_largest_offset() {
        let k = add_f16();
        let n31 = 1usize << 31;
        // n itself at 2^31: 64-bit.
        let l = elementwise_layout(&k, &[n31], &[vec![1], vec![1]]).unwrap();
        assert!(!l.index32);
        let l = elementwise_layout(&k, &[n31 - 1], &[vec![1], vec![0]]).unwrap();
        assert!(l.index32);
        // A small output read through a large stride: the last offset decides.
        let l = elementwise_layout(&k, &[1024], &[vec![1], vec![1 << 21]]).unwrap();
        assert!(l.index32, "1023 * 2^21 < 2^31");
        let l = elementwise_layout(&k, &[1025], &[vec![1], vec![1 << 21]]).unwrap();
        assert!(!l.index32, "1024 * 2^21 = 2^31");
        // The flag, and the paths a test may turn off.
        let word = |b: &[u8], at: usize| i32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        let at = 8 * (2 + 1 + 1 + 8 + 16);
        let strides = [vec![8, 1], vec![0, 1]];
        let b = elementwise_args(&k, &[256, 512], 1024, &[3, 8], &strides).unwrap();
        assert_eq!((word(&b, at + 4), word(&b, at + 24)), (1, 1));
        let paths = ElemPaths { vector: false, index32: false };
        let b = elementwise_args_with(&k, &[256, 512], 1024, &[3, 8], &strides, paths).unwrap();
        assert_eq!((word(&b, at + 4), word(&b, at + 24)), (0, 0));
        assert!(elementwise_layout(&k, &[3], &[vec![1], vec![-1]]).is_err());
    }

    #[test]
    fn collapse_merges_the_dims_of_a_permuted_input() {
        // An NCHW output [2, 3, 4, 5] plus an NHWC buffer [2, 4, 5, 3] read in NCHW order:
        // H and W are contiguous for both and merge; C is not and stays apart from N.
        let out = [2, 3, 4, 5];
        let nchw = broadcast_strides(&out, &out).unwrap();
        let nhwc = vec![60, 1, 15, 3];
        let (dims, s) = collapse(&out, &[nchw.clone(), nhwc.clone()]).unwrap();
        assert_eq!(dims, vec![2, 3, 20]);
        assert_eq!(s, vec![vec![60, 20, 1], vec![60, 1, 3]]);
        // A per-channel [1, 3, 1, 1] scale over NHWC data read through NCHW strides too.
        let chan = broadcast_strides(&[1, 3, 1, 1], &out).unwrap();
        let (dims, s) = collapse(&out, &[nhwc, chan]).unwrap();
        assert_eq!(dims, vec![2, 3, 20]);
        assert_eq!(s, vec![vec![60, 1, 3], vec![0, 1, 0]]);
        let k = add_f16();
        let l = elementwise_layout(&k, &out, &[nchw, vec![60, 1, 15, 3]]).unwrap();
        assert_eq!((l.dims.len(), l.vector), (3, false));
    }

    #[test]
    fn float_math_stays_in_f32() {
        // The expressions of f32 and f16 kernels call the f32 functions and never convert to
        // double (a double op runs at a fraction of the f32 rate).
        let ops = [
            UnaryOp::Erf,
            UnaryOp::Exp,
            UnaryOp::Tanh,
            UnaryOp::Sigmoid,
            UnaryOp::Gelu { tanh: false },
            UnaryOp::Gelu { tanh: true },
            UnaryOp::Softplus,
            UnaryOp::Mish,
            UnaryOp::Elu { alpha: 1.0 },
            UnaryOp::HardSwish,
            UnaryOp::Round,
        ];
        for dt in [DType::F32, DType::F16, DType::BF16] {
            for u in ops {
                let k = elementwise_kernel(&Expr::op(ElementwiseOp::Unary(u), 1), &[dt]).unwrap();
                let e = k.generated.split("kiln_expr(").nth(1).unwrap_or_default();
                let e = &e[..e.find("\n}").unwrap_or(e.len())];
                assert!(!e.contains("double"), "{u:?} on {dt}: {e}");
                for f in ["erf(", "exp(", "tanh(", "log1p(", "rint(", "fmax(", "fmin("] {
                    assert!(!e.contains(&format!(" {f}")) && !e.contains(&format!("({f}")), "{u:?} on {dt}: {e}");
                }
            }
        }
        let g = elementwise_kernel(&Expr::op(ElementwiseOp::Unary(UnaryOp::Gelu { tanh: false }), 1), &[DType::F16])
            .unwrap();
        assert!(g.generated.contains("erff("), "{}", g.generated);
    }
}
