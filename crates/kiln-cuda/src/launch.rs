//! Launch configurations and the parameter structs of the kernel families, kept next to each
//! other so that the host side of a kernel's signature lives in one place.
//!
//! Everything here is pure: it builds bytes and grid sizes, and runs without a GPU. The
//! structs mirror the C structs of the `.cu` files field by field (all fields 8 bytes, or two
//! 4-byte fields in a row, so no padding differs between Rust and C).

use crate::driver::{LaunchConfig, Param};
use crate::error::{CudaError, Result};

/// Threads per block of the grid-stride kernels.
pub const THREADS: u32 = 256;
/// Blocks are capped here; a grid-stride loop covers the rest.
pub const MAX_BLOCKS: u64 = 65_535;

/// A grid-stride launch over `n` elements.
pub fn grid_stride(n: u64) -> LaunchConfig {
    LaunchConfig::linear(n.div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS) as u32, THREADS)
}

/// Blocks of a generated elementwise kernel are capped here, past which each thread loops:
/// about eight waves of the largest parts (an H100 or H200 holds 132 SMs x 8 blocks of 256
/// threads at once), enough to hide memory latency, while a thread's setup (the vector path's
/// row column) is paid once for all its iterations.
pub const ELEMENTWISE_MAX_BLOCKS: u64 = 8192;

/// The launch of a generated elementwise kernel over `work` items (vectors or elements, one per
/// thread up to the cap).
pub fn elementwise(work: u64) -> LaunchConfig {
    LaunchConfig::linear(work.div_ceil(THREADS as u64).clamp(1, ELEMENTWISE_MAX_BLOCKS) as u32, THREADS)
}

/// Most threads a per-row block gets. At 256 threads every kernel can launch whatever
/// registers the compiler gave it (65536 per SM / 256 = 255, the most a thread can have),
/// which 1024 would not guarantee; a thread then loops over n / 256 elements.
pub const ROW_THREADS: u64 = 256;

/// One block per row (grid-stride over rows) for rows of `n` elements: enough warps to cover
/// the row, at most [`ROW_THREADS`].
pub fn per_row(rows: u64, n: u64) -> LaunchConfig {
    let threads = (n.div_ceil(32) * 32).clamp(32, ROW_THREADS) as u32;
    LaunchConfig::linear(rows.clamp(1, MAX_BLOCKS) as u32, threads)
}

/// Bytes of one row a warp-per-row kernel (`layernorm_warp_*`, `rmsnorm_warp_*`,
/// `softmax_warp_*`) holds in registers: 32 lanes of `KILN_ROW_VECS` (8) 16-byte vectors.
pub const WARP_ROW_BYTES: u64 = 32 * 8 * 16;

/// Rows (warps) per block of a warp-per-row kernel.
pub const WARP_ROWS_PER_BLOCK: u64 = 8;

/// Whether rows of `n` elements of `elem_bytes` bytes take a warp-per-row kernel: whole 16-byte
/// vectors (so an aligned tensor has every row aligned) that fit [`WARP_ROW_BYTES`]. Longer or
/// odd rows take the block-per-row kernel ([`per_row`]).
pub fn warp_row_fits(n: u64, elem_bytes: u64) -> bool {
    let bytes = n * elem_bytes;
    n > 0 && bytes.is_multiple_of(16) && bytes <= WARP_ROW_BYTES
}

/// One warp per row, [`WARP_ROWS_PER_BLOCK`] rows per block (grid-stride over rows past
/// [`MAX_BLOCKS`] blocks).
pub fn warp_per_row(rows: u64) -> LaunchConfig {
    let blocks = rows.div_ceil(WARP_ROWS_PER_BLOCK).clamp(1, MAX_BLOCKS) as u32;
    LaunchConfig::linear(blocks, (32 * WARP_ROWS_PER_BLOCK) as u32)
}

/// The batched tiled transpose: 32x32 tiles of 32x8 threads.
pub fn transpose2d(batch: u64, rows: u64, cols: u64) -> Result<LaunchConfig> {
    let (gx, gy) = (cols.div_ceil(32).max(1), rows.div_ceil(32).max(1));
    if gx > u32::MAX as u64 || gy > MAX_BLOCKS {
        return Err(CudaError::Invalid(format!("transpose of {rows} x {cols} is too large for one launch")));
    }
    Ok(LaunchConfig {
        grid: (gx as u32, gy as u32, batch.clamp(1, MAX_BLOCKS) as u32),
        block: (32, 8, 1),
        shared_bytes: 0,
    })
}

/// Collapses a strided view for the `permute_*` kernel: `Strided { dims[8], strides[8] }`.
pub fn strided_param(dims: &[usize], strides: &[i64]) -> Result<(Param, i32)> {
    let (dims, s) = crate::codegen::collapse(dims, &[strides.to_vec()])?;
    if dims.len() > crate::codegen::MAX_RANK {
        return Err(CudaError::Invalid(format!(
            "rank {} exceeds {} after collapsing",
            dims.len(),
            crate::codegen::MAX_RANK
        )));
    }
    let mut v = vec![1i64; 16];
    for (d, &n) in dims.iter().enumerate() {
        v[d] = n as i64;
        v[8 + d] = s[0][d];
    }
    Ok((Param::i64s(&v), dims.len() as i32))
}

/// Element width name of a `permute_*`, `pad_*`, ... kernel for elements of `size` bytes.
pub fn width_suffix(size: usize) -> Result<&'static str> {
    Ok(match size {
        1 => "u8",
        2 => "u16",
        4 => "u32",
        8 => "u64",
        n => return Err(CudaError::Unsupported(format!("no data-movement kernel moves {n}-byte elements"))),
    })
}

/// Pooling parameters (`PoolArgs` in `pool.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolArgs {
    /// N * C.
    pub planes: i64,
    /// Input height and width.
    pub ih: i64,
    /// Input width.
    pub iw: i64,
    /// Output height.
    pub oh: i64,
    /// Output width.
    pub ow: i64,
    /// Kernel height.
    pub kh: i64,
    /// Kernel width.
    pub kw: i64,
    /// Stride along H.
    pub sh: i64,
    /// Stride along W.
    pub sw: i64,
    /// Dilation along H.
    pub dh: i64,
    /// Dilation along W.
    pub dw: i64,
    /// Padding before H.
    pub ph0: i64,
    /// Padding before W.
    pub pw0: i64,
    /// Padding after H.
    pub ph1: i64,
    /// Padding after W.
    pub pw1: i64,
    /// AveragePool's count_include_pad.
    pub count_include_pad: bool,
}

impl PoolArgs {
    /// The kernel parameter.
    pub fn param(&self) -> Param {
        Param::i64s(&[
            self.planes,
            self.ih,
            self.iw,
            self.oh,
            self.ow,
            self.kh,
            self.kw,
            self.sh,
            self.sw,
            self.dh,
            self.dw,
            self.ph0,
            self.pw0,
            self.ph1,
            self.pw1,
            self.count_include_pad as i64,
        ])
    }
}

/// Depthwise convolution parameters (`DwArgs` in `conv.cu`): sizes, then the fused
/// activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DwArgs {
    /// `[n, c, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]`: batch, channels, input and
    /// output size, kernel, strides, dilations and the padding before each spatial dim.
    pub dims: [i64; 14],
    /// 0: none, 1: ReLU, 2: clamp to `[lo, hi]`.
    pub act: i64,
    /// Clamp bounds.
    pub lo: f64,
    /// Upper clamp bound.
    pub hi: f64,
}

/// Output columns one thread of the depthwise vector kernels computes (`DW_OX` in `conv.cu`).
pub const DW_OX: u64 = 4;
/// The largest kernel side the depthwise vector kernels take (`DW_K` in `conv.cu`).
pub const DW_K: i64 = 3;

/// Whether `a, b, c, d` are each at least 1 with a product below 2^31 - 64 (`dw_fits`).
fn dw_fits(a: i64, b: i64, c: i64, d: i64) -> bool {
    let lim = i64::from(i32::MAX) - 64;
    [a, b, c, d].iter().all(|v| (1..=lim).contains(v))
        && a.checked_mul(b).and_then(|p| p.checked_mul(c)).and_then(|p| p.checked_mul(d)).is_some_and(|p| p <= lim)
}

impl DwArgs {
    /// The kernel parameter.
    pub fn param(&self) -> Param {
        let mut v = self.dims.to_vec();
        v.extend([self.act, self.lo.to_bits() as i64, self.hi.to_bits() as i64]);
        Param::i64s(&v)
    }

    /// Channels per 16-byte vector for elements of `size` bytes: 8 for f16 and bf16, 4 for f32.
    pub fn vector_width(size: usize) -> i64 {
        (16 / size.max(1)) as i64
    }

    /// Whether the vector kernels (`dwconv2d_nhwc_v8`, `dwconv2d_nhwc_v4`) take their vector
    /// path for elements of `size` bytes: `dw_vector_ok` in `conv.cu`, less the 16-byte
    /// alignment of the pointers, which the kernel checks (and which the plan's buffers, whole
    /// allocations at 256-byte offsets, have). Kernel at most 3 x 3, strides 1 or 2, dilation
    /// 1, channels a multiple of the vector width, element counts below 2^31 - 64.
    pub fn vector_ok(&self, size: usize) -> bool {
        let [n, c, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw] = self.dims;
        let v = Self::vector_width(size);
        matches!(size, 2 | 4)
            && c % v == 0
            && dw_fits(n, ih, iw, c)
            && dw_fits(n, oh, ow, c)
            && dw_fits(kh, kw, c, 1)
            && kh <= DW_K
            && kw <= DW_K
            && (dh, dw) == (1, 1)
            && matches!(sh, 1 | 2)
            && matches!(sw, 1 | 2)
            && (0..=65536).contains(&ph)
            && (0..=65536).contains(&pw)
            && oh <= 1 << 29
            && ow <= 1 << 29
    }

    /// The launch of a vector kernel: one thread per channel vector of [`DW_OX`] output
    /// columns of one output row.
    pub fn vector_launch(&self, size: usize) -> LaunchConfig {
        let [n, c, _, _, oh, ow, ..] = self.dims.map(|d| d.max(0) as u64);
        let v = Self::vector_width(size) as u64;
        grid_stride(n.saturating_mul(oh).saturating_mul(ow.div_ceil(DW_OX)).saturating_mul(c.div_ceil(v)))
    }
}

/// Pooling parameters over three spatial dims (`Pool3Args` in `pool.cu`); fewer dims are
/// given as leading dims of size one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pool3Args {
    /// N * C.
    pub planes: i64,
    /// Input sizes.
    pub input: [i64; 3],
    /// Output sizes.
    pub output: [i64; 3],
    /// Window sizes.
    pub kernel: [i64; 3],
    /// Strides.
    pub stride: [i64; 3],
    /// Dilations.
    pub dilation: [i64; 3],
    /// Padding before each dim.
    pub pad_begin: [i64; 3],
    /// Padding after each dim.
    pub pad_end: [i64; 3],
    /// AveragePool's count_include_pad.
    pub count_include_pad: bool,
    /// MaxPool's storage_order 1: column-major indices.
    pub column_major: bool,
    /// LpPool's exponent.
    pub p: f64,
}

impl Pool3Args {
    /// The struct's fields in declaration order.
    pub fn fields(&self) -> Vec<crate::plan::Field> {
        use crate::plan::Field;
        let mut f = vec![Field::I64(self.planes)];
        for a in [self.input, self.output, self.kernel, self.stride, self.dilation, self.pad_begin, self.pad_end] {
            f.extend(a.map(Field::I64));
        }
        f.extend([Field::I64(self.count_include_pad as i64), Field::I64(self.column_major as i64), Field::F64(self.p)]);
        f
    }
}

/// ConvTranspose parameters (`ConvTArgs` in `spatial.cu`), over three spatial dims (fewer given
/// as leading dims of size one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTArgs {
    /// Batch.
    pub n: i64,
    /// Input channels.
    pub c: i64,
    /// Output channels.
    pub m: i64,
    /// Groups.
    pub group: i64,
    /// Input sizes.
    pub input: [i64; 3],
    /// Output sizes.
    pub output: [i64; 3],
    /// Kernel sizes.
    pub kernel: [i64; 3],
    /// Strides.
    pub stride: [i64; 3],
    /// Dilations.
    pub dilation: [i64; 3],
    /// Cells cut from the beginning of the full output (negative: added).
    pub pad_begin: [i64; 3],
}

impl ConvTArgs {
    /// The struct's fields in declaration order.
    pub fn fields(&self) -> Vec<crate::plan::Field> {
        use crate::plan::Field;
        let mut f: Vec<Field> = [self.n, self.c, self.m, self.group].map(Field::I64).to_vec();
        for a in [self.input, self.output, self.kernel, self.stride, self.dilation, self.pad_begin] {
            f.extend(a.map(Field::I64));
        }
        f
    }
}

/// GridSample parameters (`GridSampleArgs` in `spatial.cu`), over three spatial dims (fewer
/// given as leading dims of size one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridSampleArgs {
    /// Batch.
    pub n: i64,
    /// Channels.
    pub c: i64,
    /// Input sizes.
    pub input: [i64; 3],
    /// Output sizes.
    pub output: [i64; 3],
    /// How many of the three dims are real (the grid's last dim).
    pub rank: i64,
    /// `GS_LINEAR`, `GS_NEAREST` or `GS_CUBIC`.
    pub mode: i64,
    /// `GS_ZEROS`, `GS_BORDER` or `GS_REFLECTION`.
    pub padding: i64,
    /// align_corners.
    pub align_corners: bool,
}

impl GridSampleArgs {
    /// The struct's fields in declaration order.
    pub fn fields(&self) -> Vec<crate::plan::Field> {
        use crate::plan::Field;
        let mut f: Vec<Field> = [self.n, self.c].map(Field::I64).to_vec();
        f.extend(self.input.map(Field::I64));
        f.extend(self.output.map(Field::I64));
        f.extend([self.rank, self.mode, self.padding, self.align_corners as i64].map(Field::I64));
        f
    }
}

/// Col2Im parameters (`Col2ImArgs` in `spatial.cu`), over three image dims (fewer given as
/// leading dims of size one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Col2ImArgs {
    /// Batch.
    pub n: i64,
    /// Channels of the image.
    pub c: i64,
    /// Blocks per image (the input's last dim).
    pub l: i64,
    /// Image sizes.
    pub image: [i64; 3],
    /// Block sizes.
    pub block: [i64; 3],
    /// Block positions per dim.
    pub counts: [i64; 3],
    /// Strides.
    pub stride: [i64; 3],
    /// Dilations.
    pub dilation: [i64; 3],
    /// Padding before each dim.
    pub pad_begin: [i64; 3],
}

impl Col2ImArgs {
    /// The struct's fields in declaration order.
    pub fn fields(&self) -> Vec<crate::plan::Field> {
        use crate::plan::Field;
        let mut f: Vec<Field> = [self.n, self.c, self.l].map(Field::I64).to_vec();
        for a in [self.image, self.block, self.counts, self.stride, self.dilation, self.pad_begin] {
            f.extend(a.map(Field::I64));
        }
        f
    }
}

/// Resize parameters (`ResizeArgs` in `resize.cu`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResizeArgs {
    /// N * C.
    pub planes: i64,
    /// Input height.
    pub ih: i64,
    /// Input width.
    pub iw: i64,
    /// Output height.
    pub oh: i64,
    /// Output width.
    pub ow: i64,
    /// Scale along H (output / input unless given).
    pub scale_h: f64,
    /// Scale along W.
    pub scale_w: f64,
    /// `COORD_*` in `resize.cu`.
    pub coord_mode: i64,
    /// `NEAREST_*` in `resize.cu`.
    pub nearest_mode: i64,
}

impl ResizeArgs {
    /// The kernel parameter.
    pub fn param(&self) -> Param {
        let mut b = Param::i64s(&[self.planes, self.ih, self.iw, self.oh, self.ow]).0;
        b.extend(self.scale_h.to_ne_bytes());
        b.extend(self.scale_w.to_ne_bytes());
        b.extend(self.coord_mode.to_ne_bytes());
        b.extend(self.nearest_mode.to_ne_bytes());
        Param(b)
    }
}

/// The strides of one attention operand in elements over (batch, head, row); the head dim is
/// contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AttnStrides {
    /// Between batches.
    pub batch: i64,
    /// Between heads.
    pub head: i64,
    /// Between rows (sequence positions).
    pub row: i64,
}

impl AttnStrides {
    /// `[B, H, S, D]`, contiguous.
    pub fn bhsd(heads: usize, seq: usize, d: usize) -> AttnStrides {
        AttnStrides { batch: (heads * seq * d) as i64, head: (seq * d) as i64, row: d as i64 }
    }
    /// `[B, S, H * D]` with rows `row_width` elements apart: heads merged (the output of
    /// PackedAttention), or one third of the packed QKV projection when `row_width` is
    /// `3 * H * D` (offset the pointer by `H * D` or `2 * H * D` for K and V).
    pub fn bshd(heads: usize, seq: usize, d: usize, row_width: usize) -> AttnStrides {
        let _ = heads;
        AttnStrides { batch: (seq * row_width) as i64, head: d as i64, row: row_width as i64 }
    }
}

/// Attention parameters (`AttnArgs` in `attention.cu`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnArgs {
    /// Q, K, V, output, mask and `nonpad_kv_seqlen` addresses (the last two 0 when absent).
    pub ptrs: [u64; 6],
    /// Batch size.
    pub batch: i64,
    /// Query heads.
    pub heads: i64,
    /// Query rows.
    pub sq: i64,
    /// Keys.
    pub sk: i64,
    /// Q's strides.
    pub q: AttnStrides,
    /// K's strides.
    pub k: AttnStrides,
    /// V's strides.
    pub v: AttnStrides,
    /// The output's strides.
    pub o: AttnStrides,
    /// The mask's strides over (batch, head, query row, key), 0 where broadcast.
    pub mask: [i64; 4],
    /// The factor of Q K^T.
    pub scale: f32,
    /// Whether the mask is bool (true attends) rather than additive in the inputs' type.
    pub mask_bool: bool,
    /// Query heads per key/value head (1 unless grouped-query).
    pub kv_group: i64,
    /// Head size of Q and K.
    pub d: i64,
    /// Head size of V and the output.
    pub dv: i64,
    /// Keys the mask covers; the later ones are masked out.
    pub mask_len: i64,
    /// With causal masking, the past sequence length: key `j` is hidden from row `i` when
    /// `j > i + offset`.
    pub causal: Option<i64>,
    /// Soft-capping of the biased scores, 0 for none.
    pub softcap: f32,
}

/// Query rows each warp of the tensor-core attention kernels (`attention_mma_*`) takes.
pub const ATTN_MMA_ROWS: u64 = 16;

/// Warps per block of `attention_mma_d*`; the `attention_mma_w1_d*` kernels take one.
pub const ATTN_MMA_WARPS: u64 = 4;

/// Head sizes (of Q, K and V alike) the tensor-core attention kernels are compiled for.
pub const ATTN_MMA_HEAD_SIZES: [i64; 2] = [64, 128];

/// Fewer query rows than this and attention stays on the CUDA-core kernels: a warp's 16-row
/// tile would be mostly padding.
pub const ATTN_MMA_MIN_ROWS: i64 = 16;

/// Warps per block of the attention kernels (`ATTN_WARPS`); each takes [`attn_rows_per_warp`] rows.
pub const ATTN_ROWS_PER_BLOCK: u64 = 8;

/// Fewer blocks than this (about two per SM of an H100) and the attention launch takes one
/// query row per warp instead of [`attn_rows_per_warp`].
pub const ATTN_MIN_BLOCKS: u64 = 256;

/// Query rows each warp of an attention kernel keeps in registers (`R` in `attention.cu`):
/// 4, or 2 for f32 with head size over 64, where four rows' queries would not fit the static
/// shared memory.
pub fn attn_rows_per_warp(d: usize, dt: &str) -> u64 {
    if dt == "f32" && d > 64 {
        2
    } else {
        4
    }
}

impl AttnArgs {
    /// Plain multi-head attention over `[batch, heads, sq | sk, d]` operands with the given
    /// strides: no mask, no causal masking, no soft-capping, as many key/value heads as query
    /// heads. The fields are public; set the others after.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        heads: usize,
        sq: usize,
        sk: usize,
        d: usize,
        dv: usize,
        strides: [AttnStrides; 4],
        scale: f32,
    ) -> AttnArgs {
        let [q, k, v, o] = strides;
        AttnArgs {
            ptrs: [0; 6],
            batch: batch as i64,
            heads: heads as i64,
            sq: sq as i64,
            sk: sk as i64,
            q,
            k,
            v,
            o,
            mask: [0; 4],
            scale,
            mask_bool: false,
            kv_group: 1,
            d: d as i64,
            dv: dv as i64,
            mask_len: sk as i64,
            causal: None,
            softcap: 0.0,
        }
    }

    /// `mask_kind` of the C struct: 0 none, 1 additive, 2 bool.
    pub fn mask_kind(&self) -> i32 {
        match (self.ptrs[4] != 0, self.mask_bool) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        }
    }

    /// The struct's words after the pointers and before `scale`, in declaration order.
    pub fn sizes_and_strides(&self) -> Vec<i64> {
        let mut v = vec![self.batch, self.heads, self.sq, self.sk];
        for s in [self.q, self.k, self.v, self.o] {
            v.extend([s.batch, s.head, s.row]);
        }
        v.extend(self.mask);
        v
    }

    /// The struct's words after the `nonpad` pointer and before `softcap`.
    pub fn tail(&self) -> [i64; 5] {
        [self.kv_group, self.d, self.dv, self.mask_len, self.causal.unwrap_or(0)]
    }

    /// The kernel parameter.
    pub fn param(&self) -> Param {
        let mut v: Vec<i64> = self.ptrs[..5].iter().map(|&p| p as i64).collect();
        v.extend(self.sizes_and_strides());
        let mut b = Param::i64s(&v).0;
        b.extend(self.scale.to_ne_bytes());
        b.extend(self.mask_kind().to_ne_bytes());
        b.extend(self.ptrs[5].to_ne_bytes());
        b.extend(Param::i64s(&self.tail()).0);
        b.extend(self.softcap.to_ne_bytes());
        b.extend((self.causal.is_some() as i32).to_ne_bytes());
        // No quantized output (`oq` null, its scale and reciprocal 0).
        b.extend([0u8; 16]);
        Param(b)
    }

    /// The attention kernel for element type suffix `dt`, and its launch: the one compiled for
    /// the head size where Q's and V's are one of [`crate::kernels::ATTENTION_HEAD_SIZES`],
    /// else the generic one.
    pub fn launch(&self, dt: &str) -> Result<(String, LaunchConfig)> {
        let sizes = crate::kernels::ATTENTION_HEAD_SIZES;
        let max = crate::kernels::ATTENTION_GENERIC_MAX as i64;
        let (d, dv) = (self.d, self.dv);
        let exact = d == dv && sizes.iter().any(|&s| s as i64 == d);
        let generic = (0..=max).contains(&d) && (0..=max).contains(&dv);
        if !(exact || generic) {
            return Err(CudaError::Unsupported(format!(
                "attention kernels take head sizes {sizes:?}, or any up to {max}, not {d} (V {dv})"
            )));
        }
        if self.heads > MAX_BLOCKS as i64 || self.batch > MAX_BLOCKS as i64 {
            return Err(CudaError::Invalid(format!(
                "attention over {} batches x {} heads is too large",
                self.batch, self.heads
            )));
        }
        if self.kv_group < 1 || self.heads % self.kv_group != 0 {
            return Err(CudaError::Invalid(format!(
                "{} query heads in groups of {} per key/value head",
                self.heads, self.kv_group
            )));
        }
        // f16 and bf16 with head size 64 or 128: tensor cores, 16 rows a warp, blocks of four
        // warps where they fill the GPU (BERT-base at batch 32: 768 blocks), else of one.
        if matches!(dt, "f16" | "bf16") && d == dv && ATTN_MMA_HEAD_SIZES.contains(&d) && self.sq >= ATTN_MMA_MIN_ROWS {
            let bh = self.heads as u64 * self.batch as u64;
            let warps = if (self.sq as u64).div_ceil(ATTN_MMA_ROWS * ATTN_MMA_WARPS) * bh >= ATTN_MIN_BLOCKS {
                ATTN_MMA_WARPS
            } else {
                1
            };
            let gx = (self.sq as u64).div_ceil(ATTN_MMA_ROWS * warps);
            if gx > u32::MAX as u64 {
                return Err(CudaError::Invalid(format!("attention over {} query rows is too large", self.sq)));
            }
            let name =
                if warps == 1 { format!("attention_mma_w1_d{d}_{dt}") } else { format!("attention_mma_d{d}_{dt}") };
            let grid = (gx as u32, self.heads as u32, self.batch as u32);
            return Ok((name, LaunchConfig { grid, block: (32 * warps as u32, 1, 1), shared_bytes: 0 }));
        }
        // Several rows per warp share each key tile, unless that leaves too few blocks to
        // fill the GPU (BERT at batch 1: 48 blocks of four rows a warp, 192 of one).
        let heads_batches = self.heads as u64 * self.batch as u64;
        let blocks = |r: u64| (self.sq as u64).div_ceil(ATTN_ROWS_PER_BLOCK * r).max(1) * heads_batches;
        let (name, r) = if !exact {
            (format!("attention_generic_{dt}"), 1)
        } else {
            let r = attn_rows_per_warp(d as usize, dt);
            if blocks(r) < ATTN_MIN_BLOCKS {
                (format!("attention_r1_d{d}_{dt}"), 1)
            } else {
                (format!("attention_d{d}_{dt}"), r)
            }
        };
        let gx = (self.sq as u64).div_ceil(ATTN_ROWS_PER_BLOCK * r).max(1);
        if gx > u32::MAX as u64 {
            return Err(CudaError::Invalid(format!("attention over {} query rows is too large", self.sq)));
        }
        let cfg = LaunchConfig {
            grid: (gx as u32, self.heads as u32, self.batch as u32),
            block: (ATTN_ROWS_PER_BLOCK as u32 * 32, 1, 1),
            shared_bytes: 0,
        };
        Ok((name, cfg))
    }
}

/// Integer convolution parameters (`QlConvArgs` in `qlinear.cu`): a 2-D convolution, a 1-D
/// one having height 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QlConvArgs {
    /// Output elements.
    pub total: i64,
    /// Input channels.
    pub c: i64,
    /// Input height.
    pub h: i64,
    /// Input width.
    pub w: i64,
    /// Output channels.
    pub m: i64,
    /// Kernel height.
    pub kh: i64,
    /// Kernel width.
    pub kw: i64,
    /// Output height.
    pub oh: i64,
    /// Output width.
    pub ow: i64,
    /// Stride along H.
    pub sh: i64,
    /// Stride along W.
    pub sw: i64,
    /// Dilation along H.
    pub dh: i64,
    /// Dilation along W.
    pub dw: i64,
    /// Padding before H.
    pub ph: i64,
    /// Padding before W.
    pub pw: i64,
    /// Channel groups.
    pub group: i64,
    /// Values in the weight's zero point (1 or one per output channel).
    pub w_zp_n: i64,
}

impl QlConvArgs {
    /// The kernel parameter.
    pub fn param(&self) -> Param {
        Param::i64s(&[
            self.total,
            self.c,
            self.h,
            self.w,
            self.m,
            self.kh,
            self.kw,
            self.oh,
            self.ow,
            self.sh,
            self.sw,
            self.dh,
            self.dw,
            self.ph,
            self.pw,
            self.group,
            self.w_zp_n,
        ])
    }
}

impl QlConvArgs {
    /// Whether the tensor-core kernels' int offsets hold: one image (`c * h * w`), one weight
    /// row (`c * kh * kw`), one output plane (`oh * ow`) and the furthest tap of the padded
    /// input along each axis fit in an `i32`, as do the output positions (`total / m`) once
    /// divided into [`QTC_ROWS`] blocks.
    pub fn fits_tensor_cores(&self) -> bool {
        let fits = |v: Option<i64>| v.is_some_and(|v| (0..=i32::MAX as i64).contains(&v));
        let extent =
            |o: i64, s: i64, k: i64, d: i64, p: i64| o.checked_mul(s)?.checked_add(k.checked_mul(d)?)?.checked_add(p);
        let rows = self.total.checked_div(self.m);
        fits(self.c.checked_mul(self.h).and_then(|v| v.checked_mul(self.w)))
            && fits(self.c.checked_mul(self.kh).and_then(|v| v.checked_mul(self.kw)))
            && fits(self.oh.checked_mul(self.ow))
            && fits(extent(self.oh, self.sh, self.kh, self.dh, self.ph))
            && fits(extent(self.ow, self.sw, self.kw, self.dw, self.pw))
            && fits(self.m.checked_add(QTC_COLS as i64))
            && fits(rows.map(|r| r / QTC_ROWS as i64 + 1))
    }
}

/// Output positions (GEMM rows) per block of the tensor-core convolutions (`QTC_BM` in
/// `qlinear.cu`).
pub const QTC_ROWS: u64 = 128;
/// Output channels (GEMM columns) per block of the tensor-core convolutions (`QTC_BN`).
pub const QTC_COLS: u64 = 64;
/// Threads per block of the tensor-core convolutions (`QTC_THREADS`): 8 warps.
pub const QTC_THREADS: u32 = 256;

/// The launch of `conv_integer_tc_*` and `qlinear_conv_tc_*`: one block per [`QTC_ROWS`]
/// output positions by [`QTC_COLS`] output channels.
pub fn conv_tc(rows: u64, channels: u64) -> Result<LaunchConfig> {
    let (gx, gy) = (rows.div_ceil(QTC_ROWS), channels.div_ceil(QTC_COLS));
    if gx == 0 || gy == 0 || gx > i32::MAX as u64 || gy > MAX_BLOCKS {
        return Err(CudaError::Invalid(format!(
            "a tensor-core convolution of {rows} positions by {channels} channels does not fit one launch"
        )));
    }
    Ok(LaunchConfig { grid: (gx as u32, gy as u32, 1), block: (QTC_THREADS, 1, 1), shared_bytes: 0 })
}

/// RotaryEmbedding parameters (`RopeArgs` in `attention.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeArgs {
    /// Elements of X.
    pub n: i64,
    /// Sequence length.
    pub seq: i64,
    /// Heads.
    pub heads: i64,
    /// Head size.
    pub dh: i64,
    /// Whether X is `[batch, heads, seq, dh]` (else `[batch, seq, heads * dh]`).
    pub heads_first: bool,
    /// Rotated channels per head (even, at most `dh`).
    pub rd: i64,
    /// Whether the pairs are adjacent channels.
    pub interleaved: bool,
    /// Cache rows between batches when there are no position ids (0 or `seq`).
    pub cache_sb: i64,
    /// Rows of the caches (position ids must be below).
    pub max_pos: i64,
}

impl RopeArgs {
    /// The struct's words in declaration order.
    pub fn words(&self) -> [i64; 9] {
        [
            self.n,
            self.seq,
            self.heads,
            self.dh,
            self.heads_first as i64,
            self.rd,
            self.interleaved as i64,
            self.cache_sb,
            self.max_pos,
        ]
    }

    /// The kernel parameter.
    pub fn param(&self) -> Param {
        Param::i64s(&self.words())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_cover_odd_sizes() {
        for n in [1u64, 3, 50, 783, 4096, 1 << 40] {
            let c = grid_stride(n);
            assert!(c.grid.0 >= 1 && (c.grid.0 as u64) <= MAX_BLOCKS);
            assert!(c.grid.0 as u64 * THREADS as u64 >= n.min(MAX_BLOCKS * THREADS as u64));
            let r = per_row(n, n);
            assert_eq!(r.block.0 % 32, 0);
            assert!(r.block.0 as u64 <= ROW_THREADS);
        }
        assert_eq!(per_row(3, 50).block.0, 64);
    }

    #[test]
    fn depthwise_vector_path_takes_the_common_shapes() {
        // [n, c, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]
        let dw = |dims: [i64; 14]| DwArgs { dims, act: 2, lo: 0.0, hi: 6.0 };
        let mobilenet = dw([32, 144, 56, 56, 28, 28, 3, 3, 2, 2, 1, 1, 0, 0]);
        assert!(mobilenet.vector_ok(2) && mobilenet.vector_ok(4));
        // 32 * 28 rows, 7 groups of 4 columns, 18 vectors of 8 channels.
        assert_eq!(mobilenet.vector_launch(2).grid.0, (32 * 28 * 7 * 18) / 256);
        assert_eq!(mobilenet.vector_launch(4).grid.0, (32 * 28 * 7 * 36) / 256);
        // 12 channels are 3 vectors of f32 but not whole vectors of f16.
        let c12 = dw([1, 12, 7, 7, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1]);
        assert!(!c12.vector_ok(2) && c12.vector_ok(4));
        let base = [1, 8, 7, 7, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1];
        assert!(dw(base).vector_ok(2) && !dw(base).vector_ok(8) && !dw(base).vector_ok(1));
        // 5x5, dilation 2, stride 3, a negative or huge pad, an empty batch: not the vector path.
        for (i, v) in [(6, 5), (7, 5), (10, 2), (11, 2), (8, 3), (9, 3), (12, -1), (13, 70_000), (0, 0)] {
            let mut d = base;
            d[i] = v;
            assert!(!dw(d).vector_ok(2), "dim {i} = {v}");
        }
        // Element counts at 2^31 or more, and products that would overflow i64.
        assert!(!dw([1 << 11, 1 << 10, 1 << 5, 1 << 5, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]).vector_ok(2));
        assert!(!dw([1 << 30, 1 << 30, 1 << 30, 1 << 30, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]).vector_ok(2));
        assert!(dw([1 << 10, 1 << 10, 1 << 5, 1 << 5, 1 << 5, 1 << 5, 1, 1, 1, 1, 1, 1, 0, 0]).vector_ok(2));
    }

    #[test]
    fn struct_params_have_the_c_sizes() {
        let p = PoolArgs {
            planes: 1,
            ih: 1,
            iw: 1,
            oh: 1,
            ow: 1,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            ph0: 0,
            pw0: 0,
            ph1: 0,
            pw1: 0,
            count_include_pad: false,
        };
        assert_eq!(p.param().0.len(), 16 * 8);
        let d = DwArgs { dims: [1; 14], act: 2, lo: 0.0, hi: 6.0 };
        assert_eq!(d.param().0.len(), 17 * 8);
        let p3 = Pool3Args {
            planes: 1,
            input: [1; 3],
            output: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            dilation: [1; 3],
            pad_begin: [0; 3],
            pad_end: [0; 3],
            count_include_pad: false,
            column_major: false,
            p: 2.0,
        };
        // 1 + 7 * 3 + 2 eight-byte fields, then the double.
        assert_eq!(p3.fields().len(), 25);
        let c = ConvTArgs {
            n: 1,
            c: 1,
            m: 1,
            group: 1,
            input: [1; 3],
            output: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            dilation: [1; 3],
            pad_begin: [0; 3],
        };
        assert_eq!(c.fields().len(), 4 + 6 * 3);
        let g = GridSampleArgs {
            n: 1,
            c: 1,
            input: [1; 3],
            output: [1; 3],
            rank: 2,
            mode: 0,
            padding: 0,
            align_corners: false,
        };
        assert_eq!(g.fields().len(), 2 + 2 * 3 + 4);
        let c2 = Col2ImArgs {
            n: 1,
            c: 1,
            l: 1,
            image: [1; 3],
            block: [1; 3],
            counts: [1; 3],
            stride: [1; 3],
            dilation: [1; 3],
            pad_begin: [0; 3],
        };
        assert_eq!(c2.fields().len(), 3 + 6 * 3);
        let r = ResizeArgs {
            planes: 1,
            ih: 1,
            iw: 1,
            oh: 1,
            ow: 1,
            scale_h: 1.0,
            scale_w: 1.0,
            coord_mode: 0,
            nearest_mode: 0,
        };
        assert_eq!(r.param().0.len(), 9 * 8);
        let s = AttnStrides::bhsd(2, 3, 64);
        let mut a = AttnArgs::new(1, 2, 3, 3, 64, 64, [s; 4], 0.125);
        a.ptrs = [1, 2, 3, 4, 0, 0];
        // 5 pointers, 4 sizes, 12 strides, 4 mask strides, a float and an int, the nonpad
        // pointer, 5 words, then a float and an int.
        assert_eq!(a.param().0.len(), 25 * 8 + 8 + 8 + 5 * 8 + 8 + 16);
        // Two blocks in all: too few to fill a GPU, so one row per warp.
        let (name, cfg) = a.launch("f16").unwrap();
        assert_eq!(name, "attention_r1_d64_f16");
        assert_eq!(cfg.grid, (1, 2, 1));
        assert_eq!(AttnArgs { d: 72, dv: 72, ..a }.launch("f16").unwrap().0, "attention_generic_f16");
        assert_eq!(AttnArgs { dv: 10, ..a }.launch("f32").unwrap().0, "attention_generic_f32");
        assert!(AttnArgs { d: 256, dv: 256, ..a }.launch("f16").unwrap_err().to_string().contains("not 256"));
        assert!(AttnArgs { kv_group: 3, ..a }.launch("f16").is_err());
        assert_eq!(AttnArgs { d: 16, dv: 16, ..a }.launch("bf16").unwrap().0, "attention_r1_d16_bf16");
        assert_eq!(AttnArgs { d: 8, dv: 8, ..a }.launch("f32").unwrap().0, "attention_r1_d8_f32");
        // BERT-base at batch 32: 12 x 32 x 4 blocks of four rows a warp.
        let big = AttnArgs { batch: 32, heads: 12, sq: 128, sk: 128, ..a };
        let (name, cfg) = big.launch("f16").unwrap();
        assert_eq!(name, "attention_mma_d64_f16");
        assert_eq!((cfg.grid, cfg.block), ((2, 12, 32), (128, 1, 1)));
        assert_eq!(big.launch("bf16").unwrap().0, "attention_mma_d64_bf16");
        // At batch 1, 24 blocks of 64 rows would leave the GPU idle: 96 blocks of one warp.
        let (name, cfg) = AttnArgs { batch: 1, ..big }.launch("f16").unwrap();
        assert_eq!((name.as_str(), cfg.grid, cfg.block), ("attention_mma_w1_d64_f16", (8, 12, 1), (32, 1, 1)));
        let big128 = AttnArgs { d: 128, dv: 128, ..big };
        assert_eq!(big128.launch("f16").unwrap().0, "attention_mma_d128_f16");
        assert_eq!(AttnArgs { sq: 8, ..big }.launch("f16").unwrap().0, "attention_d64_f16");
        assert_eq!(big128.launch("f32").unwrap().1.grid, (8, 12, 32), "two rows a warp for f32 at d 128");
        let rope = RopeArgs {
            n: 1,
            seq: 1,
            heads: 1,
            dh: 2,
            heads_first: true,
            rd: 2,
            interleaved: false,
            cache_sb: 0,
            max_pos: 1,
        };
        assert_eq!(rope.param().0.len(), 9 * 8);
    }

    #[test]
    fn strided_param_collapses_contiguous_runs() {
        // A [2, 3, 4] tensor read in order collapses to one dim of 24.
        let (p, rank) = strided_param(&[2, 3, 4], &[12, 4, 1]).unwrap();
        assert_eq!(rank, 1);
        assert_eq!(&p.0[..8], &24i64.to_ne_bytes());
        // A transpose does not collapse.
        let (_, rank) = strided_param(&[4, 3], &[1, 4]).unwrap();
        assert_eq!(rank, 2);
        assert!(width_suffix(3).is_err());
    }

    #[test]
    fn qlinear_conv_args_have_the_c_size() {
        let g = QlConvArgs {
            total: 1,
            c: 1,
            h: 1,
            w: 1,
            m: 1,
            kh: 1,
            kw: 1,
            oh: 1,
            ow: 1,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            ph: 0,
            pw: 0,
            group: 1,
            w_zp_n: 1,
        };
        assert_eq!(g.param().0.len(), 17 * 8);
    }
}
