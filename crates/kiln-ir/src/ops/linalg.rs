//! Matrix products and convolutions: MatMul, Gemm, Einsum, Conv, ConvTranspose and the integer and quantized forms.

use super::infer::*;
use super::pool::{AutoPad, PoolWindow, WindowDim};
use crate::{DType, Dim, TypeInfo};

/// The geometry of a convolution (Conv, ConvInteger, QLinearConv).
///
/// The per-axis lists hold one entry per spatial dim where the importer could tell the spatial
/// rank (from an attribute or a constant weight), and are empty otherwise: a missing entry means
/// the ONNX default (stride 1, dilation 1, padding 0).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvAttrs {
    /// Kernel size per spatial dim; empty when it is taken from the weight's shape.
    pub kernel_shape: Vec<usize>,
    /// Step between output positions per spatial dim.
    pub strides: Vec<usize>,
    /// Spacing between kernel taps per spatial dim.
    pub dilations: Vec<usize>,
    /// Explicit padding in ONNX order: the begin of every spatial dim, then the ends.
    /// Used only when `auto_pad` is [`AutoPad::NotSet`].
    pub pads: Vec<usize>,
    /// Automatic padding; SAME needs the input size, so it is resolved by [`ConvAttrs::dims`].
    pub auto_pad: AutoPad,
    /// Number of channel groups: input and output channels split into `group` independent
    /// convolutions (`group == C` is a depthwise convolution).
    pub group: usize,
}

impl ConvAttrs {
    /// Resolves every spatial dim for an input of spatial sizes `spatial` and a weight of
    /// spatial sizes `kernel` (`W.shape[2..]`).
    pub fn dims(&self, spatial: &[usize], kernel: &[usize]) -> Result<Vec<WindowDim>, String> {
        let r = spatial.len();
        check_kernel(&self.kernel_shape, kernel)?;
        let window = PoolWindow {
            kernel_shape: kernel.to_vec(),
            strides: per_axis(&self.strides, r, 1, "strides")?,
            pads: per_axis(&self.pads, 2 * r, 0, "pads")?,
            auto_pad: self.auto_pad,
            dilations: per_axis(&self.dilations, r, 1, "dilations")?,
            ceil_mode: false,
        };
        window.dims(spatial)
    }
}

/// The geometry of a transposed convolution.
///
/// As in [`ConvAttrs`], empty per-axis lists mean the ONNX defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTransposeAttrs {
    /// Kernel size per spatial dim; empty when it is taken from the weight's shape.
    pub kernel_shape: Vec<usize>,
    /// Step between input positions in the output per spatial dim.
    pub strides: Vec<usize>,
    /// Spacing between kernel taps per spatial dim.
    pub dilations: Vec<usize>,
    /// Explicit padding removed from the full output: begins of every spatial dim, then ends.
    pub pads: Vec<usize>,
    /// Extra cells added at the end of each spatial dim of the output.
    pub output_padding: Vec<usize>,
    /// The requested output spatial size; when given, the padding is derived from it.
    pub output_shape: Option<Vec<usize>>,
    /// Automatic padding.
    pub auto_pad: AutoPad,
    /// Number of channel groups.
    pub group: usize,
}

/// Where one spatial dim of a transposed convolution lies: input cell `i` and kernel tap `k`
/// land on output cell `i * stride + k * dilation - pad_begin` when that is in `0..output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransposeDim {
    /// The input size.
    pub input: usize,
    /// The output size.
    pub output: usize,
    /// Cells cut from the beginning of the full output (negative: cells added there).
    pub pad_begin: i64,
    /// Kernel size.
    pub kernel: usize,
    /// Step between input positions in the output.
    pub stride: usize,
    /// Spacing between kernel taps.
    pub dilation: usize,
}

impl ConvTransposeAttrs {
    /// Resolves every spatial dim for an input of spatial sizes `spatial` and a weight of
    /// spatial sizes `kernel`, following the ONNX reference implementation.
    pub fn dims(&self, spatial: &[usize], kernel: &[usize]) -> Result<Vec<TransposeDim>, String> {
        let r = spatial.len();
        check_kernel(&self.kernel_shape, kernel)?;
        let strides = per_axis(&self.strides, r, 1, "strides")?;
        let dilations = per_axis(&self.dilations, r, 1, "dilations")?;
        let output_padding = per_axis(&self.output_padding, r, 0, "output_padding")?;
        let pads = per_axis(&self.pads, 2 * r, 0, "pads")?;
        if let Some(os) = &self.output_shape {
            if os.len() != r {
                return Err(format!("output_shape has {} entries for {r} spatial dims", os.len()));
            }
        }
        let same = matches!(self.auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
        let mut out = Vec::with_capacity(r);
        for i in 0..r {
            let (input, k, s, d) = (spatial[i], kernel[i], strides[i], dilations[i]);
            if k == 0 || s == 0 || d == 0 {
                return Err("kernel_shape, strides and dilations must be positive".into());
            }
            // The size of the output before any padding is cut away.
            let full = (s * (input.max(1) - 1) + output_padding[i] + (k - 1) * d + 1) as i64;
            let (output, pad_begin) = if same {
                let target = match &self.output_shape {
                    Some(os) => os[i] as i64,
                    None => (input * s) as i64,
                };
                let total = full - target;
                let begin =
                    if self.auto_pad == AutoPad::SameUpper { total.div_euclid(2) } else { total - total.div_euclid(2) };
                (target, begin)
            } else {
                let (pb, pe) = if self.auto_pad == AutoPad::Valid { (0, 0) } else { (pads[i], pads[i + r]) };
                match &self.output_shape {
                    Some(os) => (os[i] as i64, pb as i64),
                    None => (full - (pb + pe) as i64, pb as i64),
                }
            };
            if output < 0 {
                return Err(format!("the output of spatial dim {i} would have negative size {output}"));
            }
            out.push(TransposeDim { input, output: output as usize, pad_begin, kernel: k, stride: s, dilation: d });
        }
        Ok(out)
    }
}

fn check_kernel(attr: &[usize], kernel: &[usize]) -> Result<(), String> {
    if !attr.is_empty() && attr != kernel {
        return Err(format!("kernel_shape {attr:?} does not match the weight's spatial dims {kernel:?}"));
    }
    Ok(())
}

/// A per-axis attribute of `n` entries, or the default everywhere when empty.
fn per_axis(v: &[usize], n: usize, default: usize, what: &str) -> Result<Vec<usize>, String> {
    match v.len() {
        0 => Ok(vec![default; n]),
        len if len == n => Ok(v.to_vec()),
        len => Err(format!("{what} has {len} entries, expected {n}")),
    }
}

/// One index of an Einsum term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EinsumLabel {
    /// A named index (`i`).
    Letter(char),
    /// `...`: the leading dims not named by letters, broadcast between operands.
    Ellipsis,
}

/// A parsed Einsum equation with the output term resolved (implicit mode gives the letters that
/// occur once, in alphabetical order, after the ellipsis dims).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EinsumEquation {
    /// The indices of each operand.
    pub inputs: Vec<Vec<EinsumLabel>>,
    /// The indices of the output.
    pub output: Vec<EinsumLabel>,
}

impl EinsumEquation {
    /// Parses an equation such as `"...ij,...jk->...ik"` or `"ii"`.
    pub fn parse(equation: &str) -> Result<EinsumEquation, String> {
        let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l, Some(r)),
            None => (eq.as_str(), None),
        };
        let inputs = lhs.split(',').map(parse_term).collect::<Result<Vec<_>, _>>()?;
        let output = match rhs {
            Some(r) => {
                let out = parse_term(r)?;
                for (i, l) in out.iter().enumerate() {
                    if out[..i].contains(l) {
                        return Err(format!("output index {l:?} occurs twice in '{equation}'"));
                    }
                    if !inputs.iter().any(|t| t.contains(l)) {
                        return Err(format!("output index {l:?} of '{equation}' is in no input"));
                    }
                }
                out
            }
            None => {
                let mut letters: Vec<char> = inputs
                    .iter()
                    .flatten()
                    .filter_map(|l| match l {
                        EinsumLabel::Letter(c) => Some(*c),
                        EinsumLabel::Ellipsis => None,
                    })
                    .collect();
                letters.sort_unstable();
                let once: Vec<char> =
                    letters.iter().copied().filter(|c| letters.iter().filter(|d| *d == c).count() == 1).collect();
                let mut out = vec![];
                if inputs.iter().flatten().any(|l| *l == EinsumLabel::Ellipsis) {
                    out.push(EinsumLabel::Ellipsis);
                }
                out.extend(once.into_iter().map(EinsumLabel::Letter));
                out
            }
        };
        Ok(EinsumEquation { inputs, output })
    }

    /// The number of dims the ellipsis stands for, given the operand ranks (the broadcast of
    /// what each operand's ellipsis covers).
    pub fn ellipsis_rank(&self, ranks: &[usize]) -> Result<usize, String> {
        if ranks.len() != self.inputs.len() {
            return Err(format!("the equation has {} operands but {} were given", self.inputs.len(), ranks.len()));
        }
        let mut n = 0;
        for (term, &rank) in self.inputs.iter().zip(ranks) {
            let letters = term.iter().filter(|l| **l != EinsumLabel::Ellipsis).count();
            let has_ellipsis = term.len() != letters;
            if rank < letters || !has_ellipsis && rank != letters {
                return Err(format!("operand of rank {rank} does not fit the term with {} indices", term.len()));
            }
            n = n.max(rank - letters);
        }
        Ok(n)
    }
}

fn parse_term(s: &str) -> Result<Vec<EinsumLabel>, String> {
    let mut out = vec![];
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("...") {
            if out.contains(&EinsumLabel::Ellipsis) {
                return Err(format!("term '{s}' has two ellipses"));
            }
            out.push(EinsumLabel::Ellipsis);
            rest = r;
        } else if c.is_ascii_alphabetic() {
            out.push(EinsumLabel::Letter(c));
            rest = &rest[1..];
        } else {
            return Err(format!("unexpected character '{c}' in term '{s}'"));
        }
    }
    Ok(out)
}

/// Matrix products: MatMul, Gemm, Einsum, convolutions and the integer and quantized forms.
#[derive(Clone, Debug, PartialEq)]
pub enum LinalgOp {
    /// numpy `matmul`: 1-D operands are promoted to matrices, leading dims broadcast.
    MatMul,
    /// `alpha * op(A) @ op(B) + beta * C`, with C (optional) broadcast to `[M, N]`.
    Gemm {
        /// Scale of the product.
        alpha: f32,
        /// Scale of C.
        beta: f32,
        /// Whether A is transposed before the product.
        trans_a: bool,
        /// Whether B is transposed before the product.
        trans_b: bool,
    },
    /// Einstein summation over any number of operands.
    Einsum {
        /// The parsed equation.
        equation: EinsumEquation,
    },
    /// numpy `matmul` of 8-bit integers minus their zero points (inputs 2 and 3, optional;
    /// scalar, or per row of A and per column of B), accumulated exactly in i32.
    MatMulInteger,
    /// Quantized matmul; inputs a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale,
    /// y_zero_point. The output is quantized like y_zero_point.
    QLinearMatMul,
    /// Convolution; inputs X `[N, C, D...]`, W `[M, C/group, k...]`, optional B `[M]`.
    Conv(ConvAttrs),
    /// Transposed convolution; inputs X `[N, C, D...]`, W `[C, M/group, k...]`, optional B `[M]`.
    ConvTranspose(ConvTransposeAttrs),
    /// Convolution of 8-bit integers minus their zero points (inputs 2 and 3, optional; the
    /// weight's may be per output channel), accumulated exactly in i32.
    ConvInteger(ConvAttrs),
    /// Quantized convolution; inputs x, x_scale, x_zero_point, w, w_scale, w_zero_point,
    /// y_scale, y_zero_point, optional i32 bias B.
    QLinearConv(ConvAttrs),
    /// Determinant of the trailing square matrices.
    Det,
}

impl LinalgOp {
    /// The ONNX op name.
    pub fn name(&self) -> &'static str {
        match self {
            LinalgOp::MatMul => "MatMul",
            LinalgOp::Gemm { .. } => "Gemm",
            LinalgOp::Einsum { .. } => "Einsum",
            LinalgOp::MatMulInteger => "MatMulInteger",
            LinalgOp::QLinearMatMul => "QLinearMatMul",
            LinalgOp::Conv(_) => "Conv",
            LinalgOp::ConvTranspose(_) => "ConvTranspose",
            LinalgOp::ConvInteger(_) => "ConvInteger",
            LinalgOp::QLinearConv(_) => "QLinearConv",
            LinalgOp::Det => "Det",
        }
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[Option<InferInput<'_>>], num_outputs: usize) -> Result<Vec<TypeInfo>, String> {
        let _ = num_outputs;
        let a = input_ty(inputs, 0);
        let ty = match self {
            LinalgOp::MatMul => TypeInfo { dtype: a.dtype, shape: matmul_shape(&a, &input_ty(inputs, 1))? },
            LinalgOp::MatMulInteger => {
                TypeInfo { dtype: Some(DType::I32), shape: matmul_shape(&a, &input_ty(inputs, 1))? }
            }
            LinalgOp::QLinearMatMul => {
                let dtype = input_ty(inputs, 7).dtype.or(a.dtype);
                TypeInfo { dtype, shape: matmul_shape(&a, &input_ty(inputs, 3))? }
            }
            LinalgOp::Gemm { trans_a, trans_b, .. } => {
                let b = input_ty(inputs, 1);
                let dim = |t: &TypeInfo, i: usize, what: &str| -> Result<Dim, String> {
                    match &t.shape {
                        None => Ok(Dim::Unknown),
                        Some(s) if s.len() == 2 => Ok(s[i].clone()),
                        Some(s) => Err(format!("Gemm needs a 2-d {what}, found rank {}", s.len())),
                    }
                };
                let m = dim(&a, usize::from(*trans_a), "A")?;
                let n = dim(&b, usize::from(!*trans_b), "B")?;
                TypeInfo { dtype: a.dtype, shape: Some(vec![m, n]) }
            }
            LinalgOp::Einsum { equation } => TypeInfo { dtype: a.dtype, shape: einsum_shape(equation, inputs)? },
            LinalgOp::Conv(attrs) => TypeInfo { dtype: a.dtype, shape: conv_shape(attrs, &a, &input_ty(inputs, 1))? },
            LinalgOp::ConvInteger(attrs) => {
                TypeInfo { dtype: Some(DType::I32), shape: conv_shape(attrs, &a, &input_ty(inputs, 1))? }
            }
            LinalgOp::QLinearConv(attrs) => {
                let dtype = input_ty(inputs, 7).dtype.or(a.dtype);
                TypeInfo { dtype, shape: conv_shape(attrs, &a, &input_ty(inputs, 3))? }
            }
            LinalgOp::ConvTranspose(attrs) => {
                TypeInfo { dtype: a.dtype, shape: conv_transpose_shape(attrs, &a, &input_ty(inputs, 1))? }
            }
            LinalgOp::Det => {
                let shape = match &a.shape {
                    Some(s) if s.len() < 2 => return Err(format!("Det needs rank 2 or more, found {}", s.len())),
                    Some(s) => Some(s[..s.len() - 2].to_vec()),
                    None => None,
                };
                TypeInfo { dtype: a.dtype, shape }
            }
        };
        Ok(vec![ty])
    }
}

/// The numpy matmul shape rule.
fn matmul_shape(a: &TypeInfo, b: &TypeInfo) -> Result<Option<Vec<Dim>>, String> {
    let (Some(sa), Some(sb)) = (&a.shape, &b.shape) else {
        return Ok(None);
    };
    if sa.is_empty() || sb.is_empty() {
        return Err("MatMul operands must have rank 1 or more".into());
    }
    let mut pa = sa.clone();
    let mut pb = sb.clone();
    if pa.len() == 1 {
        pa.insert(0, Dim::Known(1));
    }
    if pb.len() == 1 {
        pb.push(Dim::Known(1));
    }
    let (ka, kb) = (&pa[pa.len() - 1], &pb[pb.len() - 2]);
    if let (Dim::Known(x), Dim::Known(y)) = (ka, kb) {
        if x != y {
            return Err(format!("MatMul inner dims differ: {x} and {y}"));
        }
    }
    let mut out = broadcast_dims(&pa[..pa.len() - 2], &pb[..pb.len() - 2])?;
    if sa.len() > 1 {
        out.push(pa[pa.len() - 2].clone());
    }
    if sb.len() > 1 {
        out.push(pb[pb.len() - 1].clone());
    }
    Ok(Some(out))
}

/// The kernel's spatial sizes from the attribute or the weight's static shape.
fn kernel_dims(kernel_shape: &[usize], w: &TypeInfo, r: usize) -> Option<Vec<usize>> {
    if !kernel_shape.is_empty() {
        return Some(kernel_shape.to_vec());
    }
    let s = w.shape.as_ref()?;
    if s.len() != r + 2 {
        return None;
    }
    s[2..].iter().map(|d| d.known()).collect()
}

/// Output spatial dims: known where the input dim and the kernel are known.
fn spatial_dims(
    x: &[Dim],
    kernel: Option<&[usize]>,
    resolve: impl Fn(&[usize], &[usize]) -> Result<Vec<usize>, String>,
) -> Result<Vec<Dim>, String> {
    let spatial = &x[2..];
    let r = spatial.len();
    let Some(kernel) = kernel else {
        return Ok(vec![Dim::Unknown; r]);
    };
    if kernel.len() != r {
        return Err(format!("input has {r} spatial dims but the kernel has {}", kernel.len()));
    }
    // Resolve one dim at a time so that a symbolic dim does not hide the others; the unknown
    // sizes are stood in by 1 and their results dropped.
    let known: Vec<usize> = spatial.iter().map(|d| d.known().unwrap_or(1)).collect();
    let out = resolve(&known, kernel);
    let mut dims = Vec::with_capacity(r);
    for (i, d) in spatial.iter().enumerate() {
        dims.push(match (d.known(), &out) {
            (Some(_), Ok(o)) => Dim::Known(o[i]),
            (Some(_), Err(e)) if spatial.iter().all(|d| d.known().is_some()) => return Err(e.clone()),
            _ => Dim::Unknown,
        });
    }
    Ok(dims)
}

fn conv_shape(attrs: &ConvAttrs, x: &TypeInfo, w: &TypeInfo) -> Result<Option<Vec<Dim>>, String> {
    let Some(sx) = &x.shape else { return Ok(None) };
    if sx.len() < 3 {
        return Err(format!("Conv needs an input of rank 3 or more, found rank {}", sx.len()));
    }
    let m = match &w.shape {
        Some(s) if s.len() != sx.len() => {
            return Err(format!("Conv input has rank {} but the weight has rank {}", sx.len(), s.len()))
        }
        Some(s) => s[0].clone(),
        None => Dim::Unknown,
    };
    let kernel = kernel_dims(&attrs.kernel_shape, w, sx.len() - 2);
    let spatial = spatial_dims(sx, kernel.as_deref(), |s, k| Ok(attrs.dims(s, k)?.iter().map(|d| d.output).collect()))?;
    let mut out = vec![sx[0].clone(), m];
    out.extend(spatial);
    Ok(Some(out))
}

fn conv_transpose_shape(attrs: &ConvTransposeAttrs, x: &TypeInfo, w: &TypeInfo) -> Result<Option<Vec<Dim>>, String> {
    let Some(sx) = &x.shape else { return Ok(None) };
    if sx.len() < 3 {
        return Err(format!("ConvTranspose needs an input of rank 3 or more, found rank {}", sx.len()));
    }
    let m = match &w.shape {
        Some(s) if s.len() != sx.len() => {
            return Err(format!("ConvTranspose input has rank {} but the weight has rank {}", sx.len(), s.len()))
        }
        Some(s) => match s[1] {
            Dim::Known(n) => Dim::Known(n * attrs.group),
            _ => Dim::Unknown,
        },
        None => Dim::Unknown,
    };
    let kernel = kernel_dims(&attrs.kernel_shape, w, sx.len() - 2);
    let spatial = spatial_dims(sx, kernel.as_deref(), |s, k| Ok(attrs.dims(s, k)?.iter().map(|d| d.output).collect()))?;
    let mut out = vec![sx[0].clone(), m];
    out.extend(spatial);
    Ok(Some(out))
}

fn einsum_shape(eq: &EinsumEquation, inputs: &[Option<InferInput<'_>>]) -> Result<Option<Vec<Dim>>, String> {
    let mut shapes = vec![];
    for i in 0..eq.inputs.len() {
        match input_ty(inputs, i).shape {
            Some(s) => shapes.push(s),
            None => return Ok(None),
        }
    }
    let ranks: Vec<usize> = shapes.iter().map(|s| s.len()).collect();
    let ell = eq.ellipsis_rank(&ranks)?;
    let mut letters: Vec<(char, Dim)> = vec![];
    let mut ellipsis: Vec<Dim> = vec![Dim::Known(1); ell];
    for (term, shape) in eq.inputs.iter().zip(&shapes) {
        let mut pos = 0;
        for l in term {
            match l {
                EinsumLabel::Ellipsis => {
                    let n = shape.len() + 1 - term.len();
                    ellipsis = broadcast_dims(&ellipsis, &shape[pos..pos + n])?;
                    pos += n;
                }
                EinsumLabel::Letter(c) => {
                    let d = shape[pos].clone();
                    match letters.iter_mut().find(|(x, _)| x == c) {
                        Some((_, prev)) => {
                            if let (Dim::Known(p), Dim::Known(q)) = (&*prev, &d) {
                                if p != q && *p != 1 && *q != 1 {
                                    return Err(format!("index '{c}' has sizes {p} and {q}"));
                                }
                                if *p == 1 {
                                    *prev = d;
                                }
                            } else if matches!(prev, Dim::Unknown) {
                                *prev = d;
                            }
                        }
                        None => letters.push((*c, d)),
                    }
                    pos += 1;
                }
            }
        }
    }
    let mut out = vec![];
    for l in &eq.output {
        match l {
            EinsumLabel::Ellipsis => out.extend(ellipsis.iter().cloned()),
            EinsumLabel::Letter(c) => {
                out.push(letters.iter().find(|(x, _)| x == c).map(|(_, d)| d.clone()).unwrap_or(Dim::Unknown))
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn check_infer(op: &LinalgOp, inputs: &[TypeInfo], expected: Result<TypeInfo, &str>) {
        let ins: Vec<Option<InferInput<'_>>> =
            inputs.iter().map(|ty| Some(InferInput { ty, value: None::<&Tensor> })).collect();
        match (op.infer(&ins, 1), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, vec![want]),
            (Err(e), Err(want)) => assert!(e.contains(want), "{e}"),
            (got, want) => panic!("{} gave {got:?}, expected {want:?}", op.name()),
        }
    }

    fn ty(dims: &[Dim]) -> TypeInfo {
        TypeInfo { dtype: Some(DType::F32), shape: Some(dims.to_vec()) }
    }

    #[test]
    fn einsum_parse_resolves_implicit_output() {
        let eq = EinsumEquation::parse("...ba, cb").unwrap();
        assert_eq!(eq.output, vec![EinsumLabel::Ellipsis, EinsumLabel::Letter('a'), EinsumLabel::Letter('c')]);
        assert!(EinsumEquation::parse("ij->ik").unwrap_err().contains("in no input"));
        assert!(EinsumEquation::parse("i.j").is_err());
    }

    #[test]
    fn matmul_and_conv_shapes() {
        let (k, s) = (Dim::Known, Dim::Sym("batch".into()));
        check_infer(
            &LinalgOp::MatMul,
            &[ty(&[s.clone(), k(1), k(5), k(3)]), ty(&[k(3)])],
            Ok(ty(&[s.clone(), k(1), k(5)])),
        );
        check_infer(&LinalgOp::MatMul, &[ty(&[k(2), k(3)]), ty(&[k(4), k(2)])], Err("inner dims"));
        let conv = LinalgOp::Conv(ConvAttrs {
            kernel_shape: vec![],
            strides: vec![2, 2],
            dilations: vec![],
            pads: vec![3, 3, 3, 3],
            auto_pad: AutoPad::NotSet,
            group: 1,
        });
        // ResNet's stem: 224 -> 112; an unknown dim stays unknown.
        let w = ty(&[k(64), k(3), k(7), k(7)]);
        check_infer(
            &conv,
            &[ty(&[s.clone(), k(3), k(224), Dim::Unknown]), w],
            Ok(ty(&[s, k(64), k(112), Dim::Unknown])),
        );
    }

    #[test]
    fn conv_transpose_output_shape_sets_the_padding() {
        let attrs = ConvTransposeAttrs {
            kernel_shape: vec![],
            strides: vec![3, 2],
            dilations: vec![],
            pads: vec![],
            output_padding: vec![],
            output_shape: Some(vec![10, 8]),
            auto_pad: AutoPad::NotSet,
            group: 1,
        };
        let d = attrs.dims(&[3, 3], &[3, 3]).unwrap();
        assert_eq!((d[0].output, d[0].pad_begin, d[1].output, d[1].pad_begin), (10, 0, 8, 0));
        let same = ConvTransposeAttrs { auto_pad: AutoPad::SameUpper, output_shape: None, ..attrs };
        let d = same.dims(&[3, 3], &[3, 3]).unwrap();
        // Full sizes 9 and 7, targets 9 and 6: one cell cut, at the end for SAME_UPPER.
        assert_eq!((d[0].output, d[0].pad_begin, d[1].output, d[1].pad_begin), (9, 0, 6, 0));
    }
}
