//! The kernel library: one CUDA C family per file under `kernels/`, embedded with
//! `include_str!`, and the list of kernels each family defines.
//!
//! Adding a family is a new `kernels/<family>.cu`, one variant here and one arm in each match
//! (see `docs/adding-a-kernel.md`). Every family except the elementwise template is compiled as
//! it is; the elementwise template gets generated expression code spliced in (see
//! [`crate::codegen`]).

use kiln_ir::DType;

/// The shared header, prepended to every family's source.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// The head sizes the attention kernels are instantiated for (`ATTN_KERNELS` in
/// `attention.cu`), Q's and V's the same.
pub const ATTENTION_HEAD_SIZES: [usize; 7] = [8, 16, 32, 64, 80, 96, 128];

/// The largest head sizes (of Q and K, and of V) `attention_generic_*` takes.
pub const ATTENTION_GENERIC_MAX: usize = 128;

/// The element types the value kernels of `index.cu` (scatters, CumSum, TopK) are
/// instantiated for (`VALUE_KERNELS`).
pub const INDEX_VALUE_TYPES: [DType; 10] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::F64,
    DType::I8,
    DType::U8,
    DType::I32,
    DType::U32,
    DType::I64,
    DType::U64,
];

/// A family of kernels: one `.cu` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFamily {
    /// The template for generated elementwise and epilogue kernels.
    Elementwise,
    /// Reductions (f64 and, for max and min, bool too), arg-reductions and softmax over one axis.
    Reduce,
    /// LayerNorm, RMSNorm, GroupNorm and InstanceNorm, MeanVarianceNormalization, LpNormalization,
    /// inference BatchNorm and LRN.
    Norm,
    /// Data movement: strided copies (transpose, slice, expand), concat and split, pad,
    /// gather, where, cast and the NCHW/NHWC conversions.
    Layout,
    /// Max, average and global pooling.
    Pool,
    /// Nearest and linear resize of two axes, and any resize by tap tables, one axis a pass.
    Resize,
    /// Fused multi-head attention with online softmax, its score output, and rotary embeddings.
    Attention,
    /// Direct convolutions for the shapes cuDNN handles badly (depthwise, channels-last).
    Conv,
    /// Indexing ops (GatherElements, GatherND, the scatters, Trilu, EyeLike, OneHot, CumSum,
    /// TopK, Hardmax) and the negative log-likelihood loss.
    Index,
    /// Linear quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.
    Quant,
    /// Integer matrix products and convolutions: MatMulInteger, QLinearMatMul, ConvInteger,
    /// QLinearConv.
    Qlinear,
    /// Direct kernels for ConvTranspose, GridSample, RoiAlign, Col2Im, AffineGrid and the window
    /// functions.
    Spatial,
}

impl KernelFamily {
    /// Every family, in the order of the files' names.
    pub const ALL: [KernelFamily; 12] = [
        KernelFamily::Attention,
        KernelFamily::Conv,
        KernelFamily::Elementwise,
        KernelFamily::Index,
        KernelFamily::Layout,
        KernelFamily::Norm,
        KernelFamily::Pool,
        KernelFamily::Qlinear,
        KernelFamily::Quant,
        KernelFamily::Reduce,
        KernelFamily::Resize,
        KernelFamily::Spatial,
    ];

    /// The file's name without `.cu`.
    pub fn name(self) -> &'static str {
        match self {
            KernelFamily::Elementwise => "elementwise",
            KernelFamily::Reduce => "reduce",
            KernelFamily::Norm => "norm",
            KernelFamily::Layout => "layout",
            KernelFamily::Pool => "pool",
            KernelFamily::Resize => "resize",
            KernelFamily::Attention => "attention",
            KernelFamily::Conv => "conv",
            KernelFamily::Index => "index",
            KernelFamily::Quant => "quant",
            KernelFamily::Qlinear => "qlinear",
            KernelFamily::Spatial => "spatial",
        }
    }

    /// The family's own source, without the common header.
    pub fn raw_source(self) -> &'static str {
        match self {
            KernelFamily::Elementwise => include_str!("../../../kernels/elementwise.cu"),
            KernelFamily::Reduce => include_str!("../../../kernels/reduce.cu"),
            KernelFamily::Norm => include_str!("../../../kernels/norm.cu"),
            KernelFamily::Layout => include_str!("../../../kernels/layout.cu"),
            KernelFamily::Pool => include_str!("../../../kernels/pool.cu"),
            KernelFamily::Resize => include_str!("../../../kernels/resize.cu"),
            KernelFamily::Attention => include_str!("../../../kernels/attention.cu"),
            KernelFamily::Conv => include_str!("../../../kernels/conv.cu"),
            KernelFamily::Index => include_str!("../../../kernels/index.cu"),
            KernelFamily::Quant => include_str!("../../../kernels/quant.cu"),
            KernelFamily::Qlinear => include_str!("../../../kernels/qlinear.cu"),
            KernelFamily::Spatial => include_str!("../../../kernels/spatial.cu"),
        }
    }

    /// The complete source NVRTC compiles: the common header inlined, then the family.
    ///
    /// The header is inlined rather than `#include`d so that the compile needs no file
    /// besides the CUDA headers, and so that the cache key covers it.
    /// For [`KernelFamily::Elementwise`] this is the template; use
    /// [`crate::codegen::elementwise_source`] for a real kernel.
    pub fn source(self) -> String {
        inline_common(self.raw_source())
    }

    /// The kernels the family's source defines (every dtype variant).
    pub fn kernels(self) -> Vec<String> {
        let floats = ["f32", "f16", "bf16"];
        let widths = ["u8", "u16", "u32", "u64"];
        let per = |ops: &[&str], dts: &[&str]| -> Vec<String> {
            ops.iter().flat_map(|o| dts.iter().map(move |d| format!("{o}_{d}"))).collect()
        };
        match self {
            // The template's kernel name comes from the generated code.
            KernelFamily::Elementwise => vec![],
            KernelFamily::Reduce => {
                let mut k = per(
                    &[
                        "reduce_sum",
                        "reduce_mean",
                        "reduce_max",
                        "reduce_min",
                        "reduce_prod",
                        "reduce_l1",
                        "reduce_l2",
                        "reduce_sumsquare",
                        "reduce_logsum",
                        "reduce_logsumexp",
                        "argmax",
                        "argmin",
                        "softmax",
                        "logsoftmax",
                        "softmax_warp",
                        "logsoftmax_warp",
                    ],
                    &floats,
                );
                k.extend(per(&["reduce_sum", "reduce_max", "reduce_min", "argmax", "argmin"], &["i32", "i64"]));
                k.extend(per(
                    &[
                        "reduce_sum",
                        "reduce_mean",
                        "reduce_max",
                        "reduce_min",
                        "reduce_prod",
                        "reduce_l1",
                        "reduce_l2",
                        "reduce_sumsquare",
                        "reduce_logsum",
                        "reduce_logsumexp",
                        "argmax",
                        "argmin",
                    ],
                    &["f64"],
                ));
                k.extend(per(&["reduce_max", "reduce_min"], &["bool"]));
                k
            }
            KernelFamily::Norm => per(
                &[
                    "layernorm",
                    "layernorm_warp",
                    "layernorm_warp_q",
                    "rmsnorm",
                    "rmsnorm_warp",
                    "groupnorm",
                    "mvn",
                    "lpnorm",
                    "batchnorm",
                    "batchnorm_stats",
                    "lrn",
                ],
                &floats,
            ),
            KernelFamily::Layout => {
                let mut k = per(
                    &[
                        "permute",
                        "copy_rows",
                        "pad",
                        "pad_from",
                        "gather",
                        "gather_rows",
                        "where",
                        "transpose2d",
                        "transpose_narrow",
                    ],
                    &widths,
                );
                k.push("nhwc4_u8".into());
                let casts = ["f32", "f16", "bf16", "f64", "i8", "u8", "i32", "i64", "bool"];
                for from in casts {
                    for to in casts {
                        k.push(format!("cast_{from}_{to}"));
                    }
                }
                k
            }
            KernelFamily::Pool => per(
                &[
                    "maxpool2d",
                    "avgpool2d",
                    "maxpool3d",
                    "avgpool3d",
                    "lppool3d",
                    "maxunpool_zero",
                    "maxunpool",
                    "globalmaxpool",
                    "globalavgpool",
                    "maxpool2d_nhwc",
                    "maxpool2d_nhwc16",
                    "avgpool2d_nhwc",
                    "globalmaxpool_nhwc",
                    "globalavgpool_nhwc",
                ],
                &floats,
            )
            .into_iter()
            .chain(
                ["maxpool2d", "maxpool2d_nhwc", "maxpool2d_nhwc16"]
                    .iter()
                    .flat_map(|k| ["i8", "u8"].map(|t| format!("{k}_{t}"))),
            )
            .collect(),
            KernelFamily::Resize => {
                let mut k = per(&["resize_nearest", "resize_linear"], &floats);
                let all = ["f32", "f16", "bf16", "f64"];
                k.extend(all.iter().flat_map(|i| all.iter().map(move |o| format!("resize_taps_{i}_{o}"))));
                k
            }
            KernelFamily::Spatial => {
                let mut k = per(
                    &["grid_sample", "roi_align", "col2im", "affine_grid", "window"],
                    &["f32", "f16", "bf16", "f64"],
                );
                k.extend(per(&["conv_transpose"], &floats));
                k
            }
            KernelFamily::Conv => {
                let mut k = per(&["dwconv2d_nhwc"], &floats);
                // The 16-byte vector path: 8 channels of a 2-byte type, 4 of f32.
                k.extend(per(&["dwconv2d_nhwc_v8"], &["f16", "bf16"]));
                k.extend(per(&["dwconv2d_nhwc_v4"], &["f32"]));
                k
            }
            KernelFamily::Qlinear => {
                let mut k = vec![];
                for a in ["u8", "i8"] {
                    for b in ["u8", "i8"] {
                        k.push(format!("matmul_integer_{a}_{b}"));
                        k.push(format!("conv_integer_{a}_{b}"));
                        for y in ["u8", "i8"] {
                            k.push(format!("qlinear_matmul_{a}_{b}_{y}"));
                            k.push(format!("qlinear_conv_{a}_{b}_{y}"));
                        }
                    }
                }
                // The tensor-core convolutions (i8 by i8, group 1, no zero points).
                k.push("conv_integer_tc_i8_i8".into());
                k.extend(["u8", "i8"].map(|y| format!("qlinear_conv_tc_i8_i8_{y}")));
                k
            }
            KernelFamily::Quant => {
                let ieee = ["f32", "f16", "bf16", "f64"];
                let ints = ["i8", "u8", "i16", "u16"];
                let small = ["i4", "u4", "f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz", "f4e2m1"];
                let mut k = vec![];
                for x in ieee {
                    for y in ints.iter().chain(&small) {
                        k.push(format!("quantize_{x}_{y}"));
                    }
                    k.push(format!("dynamic_quantize_range_{x}"));
                    k.push(format!("dynamic_quantize_{x}"));
                }
                for x in ints.iter().chain(&["i32"]).chain(&small) {
                    for y in ieee {
                        k.push(format!("dequantize_{x}_{y}"));
                    }
                }
                k.push("quantize_nhwc4_f32_i8".into());
                k
            }
            KernelFamily::Attention => {
                let mut k = per(
                    &ATTENTION_HEAD_SIZES
                        .iter()
                        .flat_map(|d| [format!("attention_d{d}"), format!("attention_r1_d{d}")])
                        .chain(["attention_generic", "attention_scores", "rotary"].map(String::from))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                    &floats,
                );
                // Tensor cores: f16 and bf16, head sizes 64 and 128, blocks of four warps or one,
                // each also storing its output quantized (`q`).
                for d in crate::launch::ATTN_MMA_HEAD_SIZES {
                    for dt in ["f16", "bf16"] {
                        for q in ["", "q_"] {
                            k.push(format!("attention_mma_{q}d{d}_{dt}"));
                            k.push(format!("attention_mma_{q}w1_d{d}_{dt}"));
                        }
                    }
                }
                k
            }
            KernelFamily::Index => {
                let mut k = per(&["gather_elements", "gather_nd", "trilu", "eyelike", "onehot"], &widths);
                k.extend(per(
                    &["scatter_elements", "scatter_nd", "cumsum", "topk"],
                    &INDEX_VALUE_TYPES.iter().map(|d| d.name()).collect::<Vec<_>>(),
                ));
                k.extend(per(&["hardmax", "nll_loss"], &["f32", "f16", "bf16", "f64"]));
                k
            }
        }
    }
}

/// Replaces the `#include "common.cuh"` line with the header itself.
pub(crate) fn inline_common(src: &str) -> String {
    src.replacen("#include \"common.cuh\"", COMMON, 1)
}
