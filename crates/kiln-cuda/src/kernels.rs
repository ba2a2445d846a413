//! The kernel library: one CUDA C family per file under `kernels/`, embedded with
//! `include_str!`, and the list of kernels each family defines.
//!
//! Adding a family is a new `kernels/<family>.cu`, one variant here and one arm in each match
//! (see `docs/adding-a-kernel.md`). Every family except the elementwise template is compiled as
//! it is; the elementwise template gets generated expression code spliced in (see
//! [`crate::codegen`]).

/// The shared header, prepended to every family's source.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// The head sizes the attention kernels are instantiated for (`ATTN_KERNELS` in
/// `attention.cu`).
pub const ATTENTION_HEAD_SIZES: [usize; 6] = [16, 32, 64, 80, 96, 128];

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
    /// Fused multi-head attention with online softmax.
    Attention,
    /// Direct kernels for ConvTranspose, GridSample, RoiAlign, Col2Im, AffineGrid and the window
    /// functions.
    Spatial,
}

impl KernelFamily {
    /// Every family, in the order of the files' names.
    pub const ALL: [KernelFamily; 8] = [
        KernelFamily::Attention,
        KernelFamily::Elementwise,
        KernelFamily::Layout,
        KernelFamily::Norm,
        KernelFamily::Pool,
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
                &["layernorm", "rmsnorm", "groupnorm", "mvn", "lpnorm", "batchnorm", "batchnorm_stats", "lrn"],
                &floats,
            ),
            KernelFamily::Layout => {
                let mut k =
                    per(&["permute", "copy_rows", "pad", "pad_from", "gather", "where", "transpose2d"], &widths);
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
                ],
                &floats,
            ),
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
            KernelFamily::Attention => per(
                &ATTENTION_HEAD_SIZES
                    .iter()
                    .flat_map(|d| [format!("attention_d{d}"), format!("attention_r1_d{d}")])
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                &floats,
            ),
        }
    }
}

/// Replaces the `#include "common.cuh"` line with the header itself.
pub(crate) fn inline_common(src: &str) -> String {
    src.replacen("#include \"common.cuh\"", COMMON, 1)
}
