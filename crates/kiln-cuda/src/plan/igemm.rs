//! The INT8 implicit-GEMM kernels (`kernels/igemm.cu`): an i8 convolution or matrix product on
//! the integer tensor cores with its epilogue applied in registers, for the epilogue nodes of
//! fusion's `qdq` rules (`ConvIntegerEpilogue`, `MatMulIntegerEpilogue`). No i32 accumulator
//! reaches memory: the kernel stores the epilogue's result (f16, f32, or i8 where the epilogue
//! ends in the next layer's quantization) directly.
//!
//! A convolution runs channels-last: its input is read NHWC (a value kept so by its producer,
//! or a permuted copy), its filter is stored OHWI and its output is kept NHWC, so INT8 networks
//! stay channels-last from one convolution to the next, as FP16 ones do. It takes i8 by i8, one
//! group, 2 spatial dims, zero points absent or constant zeros, a constant filter and input
//! channels a multiple of 16 (each 16-byte load is one pixel's channels), or at most 4 (an
//! image network's stem, read from an NCHW input: a copy with its channels padded to 4, one
//! 4-byte word a pixel, see [`IgLoad::Narrow`]). A matrix product is
//! the 1x1 case: A `[..., m, k]` by a constant B `[k, n]` stored `[n, k]`, with `k` a multiple
//! of 16. Anything else takes the accumulator path of [`super::qlinear`].

use super::*;
use crate::codegen::{
    igemm_kernel, pp_shared_bytes, pp_threads, wide_shared_bytes, wide_warp_channels, EpiRead, IgLoad, IgemmBlock,
    IGEMM_MAX_EXTRA, WIDE_BNS,
};
use kiln_ir::ops::linalg::ConvAttrs;

/// Rows of the GEMM (output positions) per block (`IG_BM`).
const BM: usize = 128;
/// A block for each of the H100's 132 SMs: a convolution with fewer than this in 128-channel
/// blocks takes 64-channel ones, for twice the blocks. Matrix products take 128-channel blocks
/// wherever they have more than 64 channels: with wgmma, BERT-base at batch 32 ran 2.241 ms so
/// against 2.289 with a bound of 264 (its 768-channel products), while ResNet-50's
/// convolutions ran 1.480 against 1.446 without one (H100, one run). For the convolutions 132
/// beats 264 (two blocks an SM): ResNet-50 ran 1.119 against 1.133 ms in each of two H100 runs
/// (ResNet-50's 128-channel layer2 convolutions, 196 blocks of 128 rows, take 128-channel
/// blocks), and 66 and 400 ran 1.136 and 1.141.
/// `KILN_IGEMM_WAVE=N` at build time sets the bound for both (0: 128-channel blocks wherever
/// there are more than 64 channels), to compare them.
const FULL_WAVE: usize = 132;

fn full_wave(matmul: bool) -> usize {
    let default = if matmul { 0 } else { FULL_WAVE };
    std::env::var("KILN_IGEMM_WAVE").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A warp's output channels in a 128-channel block: 32 (eight warps of 64 x 32, which hide
/// latency better: on an H100 ResNet-50 and BERT-base at batch 32 ran 18% and 24% faster than
/// with 64), or 64 with `KILN_IGEMM_WN=64` at build time (four warps of 64 x 64, CUTLASS's
/// shape for INT8 on sm_80), to compare the two.
fn warp_channels() -> usize {
    if std::env::var("KILN_IGEMM_WN").is_ok_and(|v| v == "64") {
        64
    } else {
        32
    }
}

/// The shape of one implicit GEMM (`IgemmArgs` in `kernels/igemm.cu`).
struct Shape {
    rows: usize,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    m: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    ph: usize,
    pw: usize,
    /// A narrow convolution: `c` is the input's channels padded to 4 (see [`IgLoad::Narrow`]).
    narrow: bool,
}

/// Which plain products may take wide blocks (see [`wide_width`]): with `KILN_IGEMM_WIDE` at
/// build time 0 none, 1 matrix products (the default), 2 also 1x1 convolutions read as plain
/// products, to compare them.
fn wide_allowed(matmul: bool, load: IgLoad) -> bool {
    let level = std::env::var("KILN_IGEMM_WIDE").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    load == IgLoad::Dense && (level >= 2 || (level == 1 && matmul))
}

/// The wide block width (one of [`WIDE_BNS`], a block an SM) for a plain product of `gx` row
/// blocks by `m` channels where it gives an SM fewer channels to compute than 128-channel
/// blocks do: an SM's blocks share its tensor cores, so its time goes with the channels it
/// computes, `ceil(tiles / SMs) * width`. BERT-base's 768-channel products take 192 (128 tiles
/// for 132 SMs: 192 channels an SM, against 256 for 192 tiles of 128 channels) and its QKV
/// product too (576 against 640); its FFN input product (3072 channels) keeps 128, which ties
/// (`KILN_IGEMM_WIDE_TIES=1` at build time takes the wide block on a tie, to compare them).
fn wide_width(gx: usize, m: usize) -> Option<usize> {
    let cost = |bn: usize| (gx * m.div_ceil(bn)).div_ceil(FULL_WAVE) * bn;
    let best = WIDE_BNS.into_iter().min_by_key(|&bn| (cost(bn), bn))?;
    let ties = std::env::var("KILN_IGEMM_WIDE_TIES").is_ok_and(|v| v == "1");
    (cost(best) < cost(128) || (ties && cost(best) == cost(128))).then_some(best)
}

/// Whether wide blocks take tile after tile, a block an SM (`IgemmBlock::looped`): yes unless
/// `KILN_IGEMM_LOOP=0` at build time, to compare them.
fn looped() -> bool {
    !std::env::var("KILN_IGEMM_LOOP").is_ok_and(|v| v == "0")
}

/// Whether 128-channel products take the persistent ping-pong kernel (`KILN_IGEMM_PP=1` at
/// build time).
fn persistent() -> bool {
    std::env::var("KILN_IGEMM_PP").is_ok_and(|v| v == "1")
}

/// Blocks of the persistent kernel: one an SM of an H100 SXM or H200 (132). On a GPU with
/// fewer SMs the blocks past them wait for a free SM, and the kernel is still correct.
const PERSISTENT_BLOCKS: usize = 132;

/// Blocks of each width an SM holds at once (`IG_MIN_BLOCKS`): four of 64 channels, two of 128.
fn blocks_per_sm(bn: usize) -> usize {
    if bn == 64 {
        4
    } else {
        2
    }
}

/// Split-K (one cluster on Hopper) for a grid with fewer blocks than [`FULL_WAVE`] SMs: the
/// most of 8, 4 and 2 blocks a tile that keeps the launch within one wave of SMs holding
/// [`blocks_per_sm`] blocks each, each block taking at least 16 of the reduction's 64-byte
/// steps, or at least 4 where the split grid still leaves an SM to each block; 1 otherwise.
/// On an H100 at batch 32 (`kiln profile`), ResNet-50's layer4 3x3 convolutions (104 blocks,
/// 72 steps) went from 0.0275 to 0.0242 ms split 4 ways, and its classifier (8 blocks, 32
/// steps) from 0.0172 to 0.0117 split 8 ways; split into 8 or 9 steps, layer4's 1x1
/// convolutions went from 0.014 to 0.016, and layer3's 3x3 ones (196 blocks) split 2 ways
/// from 0.0204 to 0.0210. `KILN_IGEMM_SPLIT=N` at build time caps it (1: never split), to
/// compare.
fn split_k(blocks: usize, bn: usize, k: usize) -> usize {
    let cap = std::env::var("KILN_IGEMM_SPLIT").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    if blocks >= FULL_WAVE {
        return 1;
    }
    let slots = FULL_WAVE * blocks_per_sm(bn);
    let steps = k.div_ceil(64);
    let fits = |s: usize| blocks * s <= slots && (steps >= 16 * s || (blocks * s <= FULL_WAVE && steps >= 4 * s));
    [8, 4, 2].into_iter().find(|&s| s <= cap && fits(s)).unwrap_or(1)
}

/// A LayerNormalization computed in a matrix product's epilogue (see
/// `Planner::layernorm_reader`): the node, its scale, bias and epsilon, and the quantize of
/// its output (node, scale and reciprocal) that the kernel computes too.
struct LnEpilogue {
    node: NodeId,
    scale: BufferId,
    bias: Option<BufferId>,
    epsilon: f32,
    quantize: Option<(NodeId, f32, f32)>,
}

/// An implicit GEMM's launch: the kernel's shape and the launch configuration.
struct IgemmLaunch {
    block: IgemmBlock,
    config: LaunchConfig,
}

impl Shape {
    /// The launch: 128 rows by 64 or 128 channels a block (see [`FULL_WAVE`]; `matmul` for a
    /// matrix product), and a warp's channels (see [`warp_channels`]), split along the
    /// reduction where the grid is small (see [`split_k`]); wide blocks where [`wide_width`]
    /// finds one for the plain products [`wide_allowed`] names, of more than one step;
    /// or, for 128-channel blocks with [`persistent`], the persistent kernel's 128 x 128
    /// tiles, a block an SM.
    fn config(&self, matmul: bool) -> Result<IgemmLaunch> {
        self.config_with(matmul, true)
    }

    /// [`Shape::config`] without wide blocks.
    fn config_narrow(&self, matmul: bool) -> Result<IgemmLaunch> {
        self.config_with(matmul, false)
    }

    fn config_with(&self, matmul: bool, allow_wide: bool) -> Result<IgemmLaunch> {
        let gx = self.rows.div_ceil(BM);
        // A reduction of one 64-byte step (ResNet-50's layer1 1x1 convolutions over 64
        // channels, mostly epilogue) takes 64-channel blocks, four an SM: at batch 32 on an H100
        // ResNet-50 ran 0.975 ms so against 0.984 with 128-channel ones (one run).
        let short = self.k() <= 64 && !persistent();
        let wide_bn = if allow_wide && !short && !persistent() && wide_allowed(matmul, self.load()) {
            wide_width(gx, self.m)
        } else {
            None
        };
        let wide = wide_bn.is_some();
        let (bn, wn) = if let Some(bn) = wide_bn {
            (bn, wide_warp_channels(bn))
        } else if short || self.m <= 64 || gx * self.m.div_ceil(128) < full_wave(matmul) {
            (64, 32)
        } else {
            (128, warp_channels())
        };
        let pp = bn == 128 && persistent();
        let gy = self.m.div_ceil(bn);
        // The kernel's row, input and filter offsets are 32-bit.
        let fits = |v: Option<usize>| v.is_some_and(|v| v <= i32::MAX as usize);
        let input = self.n.checked_mul(self.h).and_then(|v| v.checked_mul(self.w)).and_then(|v| v.checked_mul(self.c));
        let filter = (self.m + 128).checked_mul(self.k());
        if gx == 0 || gy as u64 > launch::MAX_BLOCKS || !fits(Some(self.rows)) || !fits(input) || !fits(filter) {
            return Err(CudaError::Unsupported(format!(
                "an INT8 implicit GEMM of {} rows by {} channels over {}x{}x{}x{} input does not fit 32-bit offsets",
                self.rows, self.m, self.n, self.h, self.w, self.c
            )));
        }
        let mut block = IgemmBlock::new(bn, wn, self.load());
        let config = if pp {
            block.persistent = true;
            let blocks = (gx * gy).min(PERSISTENT_BLOCKS) as u32;
            LaunchConfig { grid: (blocks, 1, 1), block: (pp_threads(wn), 1, 1), shared_bytes: pp_shared_bytes() }
        } else {
            if !self.narrow && !wide {
                block.split = split_k(gx * gy, bn, self.k());
            }
            let threads = (64 * bn / wn) as u32;
            block.looped = wide && looped();
            let shared_bytes = if wide { wide_shared_bytes(bn, block.looped) } else { 0 };
            let grid = if block.looped {
                ((gx * gy).min(FULL_WAVE) as u32, 1, 1)
            } else {
                (gx as u32, gy as u32, block.split as u32)
            };
            LaunchConfig { grid, block: (threads, 1, 1), shared_bytes }
        };
        Ok(IgemmLaunch { block, config })
    }

    /// The reduction's length in bytes: `kh * kw * c`, rounded up to 16 for a narrow
    /// convolution (its filter rows' length).
    fn k(&self) -> usize {
        let k = self.kh * self.kw * self.c;
        if self.narrow {
            k.next_multiple_of(16)
        } else {
            k
        }
    }

    /// How the kernel reads the reduction: a plain product's row `r` is the input's `c`
    /// bytes at `r * c` (a matrix product, or a 1x1 convolution of stride 1 without padding).
    fn load(&self) -> IgLoad {
        // The output's size matching the input's rules out padding at the end, which the
        // shape does not hold.
        let dense = self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.ph == 0
            && self.pw == 0
            && self.oh == self.h
            && self.ow == self.w;
        if self.narrow {
            IgLoad::Narrow
        } else if dense {
            IgLoad::Dense
        } else {
            IgLoad::Conv
        }
    }

    /// How the epilogue reads an input with strides `st` over the output's (image, row,
    /// column, channel).
    fn read(&self, st: &[i64]) -> EpiRead {
        let (m, ow, oh) = (self.m as i64, self.ow as i64, self.oh as i64);
        match st {
            [0, 0, 0, _] => EpiRead::Channels,
            // Unit output dims (a matrix product's) leave their strides unread.
            &[s0, s1, s2, 1] if s0 == oh * ow * m && (oh == 1 || s1 == ow * m) && (ow == 1 || s2 == m) => {
                EpiRead::Dense
            }
            _ => EpiRead::Strided,
        }
    }

    fn fields(&self) -> Vec<Field> {
        let k = self.k();
        [
            self.rows, self.n, self.h, self.w, self.c, self.m, self.kh, self.kw, self.oh, self.ow, self.sh, self.sw,
            self.dh, self.dw, self.ph, self.pw, k,
        ]
        .into_iter()
        .map(|v| Field::I64(v as i64))
        .collect()
    }
}

impl Planner<'_> {
    /// Whether input `slot` of `id` is absent or constant zeros (a zero point that changes
    /// nothing).
    fn zero_or_absent(&self, id: NodeId, slot: usize) -> bool {
        match self.input(id, slot) {
            Ok(None) => true,
            Ok(Some(b)) => self.const_zeros(b),
            Err(_) => false,
        }
    }

    /// Whether input `slot` of `id` is a constant.
    fn is_const(&self, id: NodeId, slot: usize) -> bool {
        let Ok(b) = self.required(id, slot) else { return false };
        matches!(self.plan.buffers[b].kind, BufferKind::Const(_))
    }

    /// A `ConvIntegerEpilogue` as one implicit-GEMM kernel, channels-last, if it qualifies
    /// (see the module's notes); else nothing is planned and the result is false.
    pub(super) fn igemm_conv(
        &mut self,
        id: NodeId,
        attrs: &ConvAttrs,
        base_inputs: usize,
        expr: &Expr,
    ) -> Result<bool> {
        let (Some((xt, xs)), Some((wt, ws))) = (self.input_type(id, 0), self.input_type(id, 1)) else {
            return Ok(false);
        };
        let Some(n_extra) = self.g.node(id).num_inputs.checked_sub(base_inputs) else { return Ok(false) };
        // A narrow input (an image's channels, NCHW) is read through a channels-last copy
        // padded to 4 channels.
        let narrow = xs.len() == 4 && xs[1] <= 4 && !self.is_nhwc(id, 0);
        let qualifies = xt == DType::I8
            && wt == DType::I8
            && xs.len() == 4
            && ws.len() == 4
            && attrs.group.max(1) == 1
            && xs[1] > 0
            && (xs[1].is_multiple_of(16) || narrow)
            && ws[1] == xs[1]
            && n_extra <= IGEMM_MAX_EXTRA
            && self.is_const(id, 1)
            && (2..base_inputs).all(|s| self.zero_or_absent(id, s));
        if !qualifies {
            return Ok(false);
        }
        let dims = attrs.dims(&xs[2..], &ws[2..]).map_err(CudaError::Invalid)?;
        let [hd, wd] = dims[..] else { return Ok(false) };
        let out_shape = vec![xs[0], ws[0], hd.output, wd.output];
        let Some(rows) = xs[0].checked_mul(hd.output).and_then(|v| v.checked_mul(wd.output)) else { return Ok(false) };
        let shape = Shape {
            rows,
            n: xs[0],
            h: xs[2],
            w: xs[3],
            c: if narrow { 4 } else { xs[1] },
            m: ws[0],
            kh: hd.kernel,
            kw: wd.kernel,
            oh: hd.output,
            ow: wd.output,
            sh: hd.stride,
            sw: wd.stride,
            dh: hd.dilation,
            dw: wd.dilation,
            ph: hd.pad_begin,
            pw: wd.pad_begin,
            narrow,
        };
        if shape.rows == 0 || shape.m == 0 {
            return Ok(false);
        }
        let Ok(launch) = shape.config(false) else { return Ok(false) };
        let mut extra = Vec::with_capacity(n_extra);
        for s in base_inputs..base_inputs + n_extra {
            extra.push(self.nhwc_operand(id, s, &out_shape)?);
        }
        let (x, w) = if narrow {
            let Some(w) = self.rewritten_const(id, 1, "narrow", narrow_filter)? else { return Ok(false) };
            (self.narrow_input(id, 0)?, w)
        } else {
            (self.nhwc_input(id, 0)?, self.nhwc_filter(id)?)
        };
        let y = self.nhwc_out(id, 0)?;
        self.launch_igemm(id, expr, [x, w, y], &shape, launch, extra, None)?;
        Ok(true)
    }

    /// A `MatMulIntegerEpilogue` as one implicit-GEMM kernel (the 1x1 case), if it qualifies
    /// (see the module's notes); else nothing is planned and the result is false.
    ///
    /// `KILN_INT8_GEMM=cublaslt` at build time keeps matrix products on cuBLASLt (an i32
    /// accumulator, then the epilogue), to compare the two in one benchmark run.
    pub(super) fn igemm_matmul(&mut self, id: NodeId, base_inputs: usize, expr: &Expr) -> Result<bool> {
        if std::env::var("KILN_INT8_GEMM").is_ok_and(|v| v == "cublaslt") {
            return Ok(false);
        }
        let (Some((at, ash)), Some((bt, bsh))) = (self.input_type(id, 0), self.input_type(id, 1)) else {
            return Ok(false);
        };
        let Some(n_extra) = self.g.node(id).num_inputs.checked_sub(base_inputs) else { return Ok(false) };
        let qualifies = at == DType::I8
            && bt == DType::I8
            && ash.len() >= 2
            && bsh.len() == 2
            && ash[ash.len() - 1] == bsh[0]
            && bsh[0] > 0
            && bsh[0].is_multiple_of(16)
            && n_extra <= IGEMM_MAX_EXTRA
            && self.is_const(id, 1)
            && (2..base_inputs).all(|s| self.zero_or_absent(id, s));
        if !qualifies {
            return Ok(false);
        }
        let (k, n) = (bsh[0], bsh[1]);
        let Some(rows) = ash[..ash.len() - 1].iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
            return Ok(false);
        };
        let mut out_shape = ash[..ash.len() - 1].to_vec();
        out_shape.push(n);
        let shape = Shape {
            rows,
            n: rows,
            h: 1,
            w: 1,
            c: k,
            m: n,
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
            narrow: false,
        };
        if rows == 0 || n == 0 {
            return Ok(false);
        }
        let Ok(launch) = shape.config(true) else { return Ok(false) };
        // Each epilogue input read as rows by channels: its strides over the leading dims must
        // fold into one row stride.
        let mut extra = Vec::with_capacity(n_extra);
        for s in base_inputs..base_inputs + n_extra {
            let b = self.required(id, s)?;
            let strides = broadcast_strides(&self.plan.buffers[b].shape, &out_shape)?;
            let Some(row) = row_stride(&out_shape, &strides) else { return Ok(false) };
            extra.push((b, vec![row, 0, 0, strides[strides.len() - 1]]));
        }
        let a = self.required(id, 0)?;
        let Some(b_nk) = self.rewritten_const(id, 1, "nk", super::qlinear::swap_last_two)? else { return Ok(false) };
        // A LayerNorm epilogue takes 128-channel blocks: where the plan's target asks for one,
        // a product its LayerNorm reads takes them instead of wide ones.
        let mut launch = launch;
        if launch.block.bn > 128 && self.target.layernorm_epilogue {
            let Ok(narrow) = shape.config_narrow(true) else { return Ok(false) };
            if self.layernorm_reader(Value { node: id, slot: 0 }, &narrow.block, &out_shape)?.is_some() {
                launch = narrow;
            }
        }
        let ln = self.layernorm_reader(Value { node: id, slot: 0 }, &launch.block, &out_shape)?;
        let (y, ln) = match ln {
            None => (self.out(id, 0)?, None),
            Some(ln) => {
                // The product's own output is never stored: the LayerNorm is its only reader.
                // Its channel blocks make the cluster, so the reduction is not split.
                launch.block.ln = n / 128;
                launch.block.split = 1;
                launch.config.grid.2 = 1;
                let y = self.out(ln.node, 0)?;
                self.absorbed.insert(ln.node);
                let q = match ln.quantize {
                    Some((node, _, _)) => {
                        self.absorbed.insert(node);
                        Field::Ptr { buffer: self.out(node, 0)?, offset_bytes: 0 }
                    }
                    None => Field::Null,
                };
                let (c, r) = ln.quantize.map_or((1.0, 1.0), |(_, c, r)| (c, r));
                let ptr = |b: Option<BufferId>| b.map_or(Field::Null, |buffer| Field::Ptr { buffer, offset_bytes: 0 });
                let fields = vec![
                    ptr(Some(ln.scale)),
                    ptr(ln.bias),
                    q,
                    Field::F64(ln.epsilon as f64),
                    Field::F64(c as f64),
                    Field::F64(r as f64),
                ];
                (y, Some(fields))
            }
        };
        self.launch_igemm(id, expr, [a, b_nk, y], &shape, launch, extra, ln)?;
        Ok(true)
    }

    /// The LayerNormalization an INT8 matrix product's epilogue can compute: where the plan's
    /// target asks for it ([`Target::layernorm_epilogue`]), the product's 128-channel blocks
    /// are 2 to 8 to a row (the reduction is then not split), and one LayerNormalization over
    /// the last axis, whose mean and inverse standard deviation nothing reads, is the only
    /// reader of the product's output `v` (BERT's output projections, whose epilogue adds the
    /// residual). The scale and bias must be ready (constants are planned here) and of the
    /// output's type; a QuantizeLinear of the LayerNorm's output (the next product's input) is
    /// computed too.
    fn layernorm_reader(&mut self, v: Value, block: &IgemmBlock, shape: &[usize]) -> Result<Option<LnEpilogue>> {
        let m = shape.last().copied().unwrap_or(0);
        if !self.target.layernorm_epilogue
            || block.bn != 128
            || block.wn != 32
            || block.persistent
            || !m.is_multiple_of(128)
            || !(2..=8).contains(&(m / 128))
            || self.g.is_output(v)
        {
            return Ok(None);
        }
        let [(u, 0)] = self.g.users(v)[..] else { return Ok(None) };
        let node = self.g.node(u);
        let Op::Norm(NormOp::LayerNormalization { axis, epsilon, .. }) = &node.op else { return Ok(None) };
        let rank = shape.len() as i64;
        let used = |slot: usize| node.outputs.get(slot).is_some_and(|o| !o.name.is_empty());
        let dtype = self.g.value_info(v).ty.dtype;
        let out = Value { node: u, slot: 0 };
        if (if *axis < 0 { axis + rank } else { *axis }) != rank - 1
            || used(1)
            || used(2)
            || !matches!(dtype, Some(DType::F16 | DType::BF16 | DType::F32))
            || self.g.value_info(out).ty.dtype != dtype
        {
            return Ok(None);
        }
        let ins = self.g.inputs_of(u);
        let (Some(Some(scale)), bias) = (ins.get(1).copied(), ins.get(2).copied().flatten()) else { return Ok(None) };
        let mut params = vec![];
        for p in std::iter::once(scale).chain(bias) {
            let Some(b) = self.ready(p)? else { return Ok(None) };
            let buf = &self.plan.buffers[b];
            if Some(buf.dtype) != dtype || buf.shape.iter().product::<usize>() != m {
                return Ok(None);
            }
            params.push(b);
        }
        let quantize = self.quantize_reader(out);
        Ok(Some(LnEpilogue { node: u, scale: params[0], bias: params.get(1).copied(), epsilon: *epsilon, quantize }))
    }

    /// The buffer of `v` if it has one, planning it first if it is a constant's; none where it
    /// is computed by a node not yet planned.
    fn ready(&mut self, v: Value) -> Result<Option<BufferId>> {
        if let Some(&b) = self.values.get(&v) {
            return Ok(Some(b));
        }
        let Op::Const(t) = &self.g.node(v.node).op else { return Ok(None) };
        let b = self.buffer(v, BufferKind::Const(t.clone()))?;
        self.absorbed.insert(v.node);
        Ok(Some(b))
    }

    /// Plans one implicit-GEMM launch over `[x, w, y]` with the epilogue `expr` over `extra`
    /// (each input with its strides over the output's image, row, column and channel), as
    /// `launch` says, generating and registering the kernel; `ln` is the `LnArgs` of a
    /// LayerNorm epilogue (`launch.block.ln` blocks a row).
    #[allow(clippy::too_many_arguments)]
    fn launch_igemm(
        &mut self,
        id: NodeId,
        expr: &Expr,
        [x, w, y]: [BufferId; 3],
        shape: &Shape,
        launch: IgemmLaunch,
        extra: Vec<(BufferId, Vec<i64>)>,
        ln: Option<Vec<Field>>,
    ) -> Result<()> {
        let reads: Vec<(DType, EpiRead)> =
            extra.iter().map(|(b, st)| (self.plan.buffers[*b].dtype, shape.read(st))).collect();
        let IgemmLaunch { block, config } = launch;
        let k = igemm_kernel(expr, &reads, block, shape.m.is_multiple_of(4))?;
        if k.output != self.plan.buffers[y].dtype {
            return Err(CudaError::Invalid(format!(
                "the epilogue gives {}, the node's output is {}",
                k.output, self.plan.buffers[y].dtype
            )));
        }
        let mut epi: Vec<Field> = (0..IGEMM_MAX_EXTRA)
            .map(|i| extra.get(i).map_or(Field::Null, |&(b, _)| Field::Ptr { buffer: b, offset_bytes: 0 }))
            .collect();
        for i in 0..IGEMM_MAX_EXTRA {
            let st = extra.get(i).map_or(&[0i64; 4][..], |(_, s)| &s[..]);
            epi.extend(st.iter().map(|&v| Field::I64(v)));
        }
        let kernel = k.name.clone();
        let index = self.generated_index(k);
        let mut args =
            vec![Arg::Buffer(x), Arg::Buffer(w), Arg::Buffer(y), Arg::Struct(shape.fields()), Arg::Struct(epi)];
        args.extend(ln.map(Arg::Struct));
        self.step(id, StepKind::Kernel(KernelStep { module: ModuleRef::Generated(index), kernel, config, args }));
        Ok(())
    }
}

impl Planner<'_> {
    /// A narrow convolution's input (NCHW, at most 4 channels) copied channels-last with its
    /// channels padded to 4 with zeros: one 4-byte word a pixel (`nhwc4_u8`).
    fn narrow_input(&mut self, id: NodeId, slot: usize) -> Result<BufferId> {
        let x = self.required(id, slot)?;
        let b = &self.plan.buffers[x];
        let &[n, c, h, w] = &b.shape[..] else {
            return Err(CudaError::Invalid(format!("a narrow convolution's input of shape {:?}", b.shape)));
        };
        if c > 4 || b.dtype.size() != 1 {
            return Err(CudaError::Invalid(format!("a narrow convolution's input {} [{n}, {c}, {h}, {w}]", b.dtype)));
        }
        let y = self.temp(format!("{}.nhwc4", b.name), b.dtype, vec![n, h, w, 4]);
        let config = launch::grid_stride((n * h * w) as u64);
        let sizes = [Arg::I64(n as i64), Arg::I64(c as i64), Arg::I64((h * w) as i64)];
        // Where the step just planned quantized an f32 input into `x` by one scale, and nothing
        // else reads `x` (a network's image), that step quantizes into the copy instead.
        if let Some((node, [xf, scale, zp])) = self.input_quantize_step(id, slot, x) {
            self.plan.steps.pop();
            // Four pixels a thread where the planes are whole vectors (the kernel's vector path).
            let pixels = if (h * w).is_multiple_of(4) { n * h * w / 4 } else { n * h * w };
            let config = launch::grid_stride(pixels as u64);
            let mut args = vec![xf, scale, zp, Arg::Buffer(y)];
            args.extend(sizes);
            let kernel = "quantize_nhwc4_f32_i8".to_string();
            let module = ModuleRef::Family(KernelFamily::Quant);
            self.use_family(KernelFamily::Quant);
            self.step(node, StepKind::Kernel(KernelStep { module, kernel, config, args }));
            return Ok(y);
        }
        let mut args = vec![Arg::Buffer(x), Arg::Buffer(y)];
        args.extend(sizes);
        self.kernel(id, KernelFamily::Layout, "nhwc4_u8".into(), config, args);
        Ok(y)
    }

    /// The last planned step, where it is `quantize_f32_i8` by one scale writing `x`, input
    /// `slot` of `id` and read by nothing else: its node and its input, scale and zero point.
    fn input_quantize_step(&self, id: NodeId, slot: usize, x: BufferId) -> Option<(NodeId, [Arg; 3])> {
        let v = self.g.inputs_of(id).get(slot).copied().flatten()?;
        if self.g.users(v).len() != 1 || self.g.is_output(v) {
            return None;
        }
        let StepKind::Kernel(k) = &self.plan.steps.last()?.kind else { return None };
        let per_tensor = matches!(k.args.get(5..8), Some([Arg::I64(1), _, Arg::I64(0)]));
        let ours = matches!(k.module, ModuleRef::Family(KernelFamily::Quant))
            && k.kernel == "quantize_f32_i8"
            && k.args.get(3) == Some(&Arg::Buffer(x))
            && per_tensor;
        ours.then(|| (v.node, [k.args[0].clone(), k.args[1].clone(), k.args[2].clone()]))
    }
}

/// A narrow convolution's filter `[m, c, kh, kw]` (`c` at most 4, one byte an element) as
/// [`IgLoad::Narrow`] reads it: `[m, k]`, row `o` holding element `(ky, kx, i)` at
/// `(ky * kw + kx) * 4 + i`, the channels past `c` and the row's tail zero, `k` the filter's
/// `kh * kw * 4` bytes rounded up to 16.
fn narrow_filter(t: &Tensor) -> Result<Tensor> {
    let &[m, c, kh, kw] = t.shape() else {
        return Err(CudaError::Invalid(format!("a filter of shape {:?} is not 4-D", t.shape())));
    };
    if c > 4 || t.dtype().size() != 1 {
        return Err(CudaError::Invalid(format!("a narrow filter {} {:?}", t.dtype(), t.shape())));
    }
    let src = crate::host::tensor_bytes(t)?;
    let k = (kh * kw * 4).next_multiple_of(16);
    let mut dst = vec![0u8; m * k];
    for o in 0..m {
        for i in 0..c {
            for y in 0..kh {
                for x in 0..kw {
                    dst[o * k + (y * kw + x) * 4 + i] = src[((o * c + i) * kh + y) * kw + x];
                }
            }
        }
    }
    crate::host::tensor_from_bytes(t.dtype(), &[m, k], &dst)
}

/// The one stride over the rows of an `[..., m, n]` output that `strides` (an input's, over
/// the output's dims) amount to: the dims before the last must be read as one run (each
/// stride the next one's times its size, or 0 throughout). None where they are not.
fn row_stride(out: &[usize], strides: &[i64]) -> Option<i64> {
    let lead = out.len() - 1;
    let live: Vec<usize> = (0..lead).filter(|&d| out[d] > 1).collect();
    if live.iter().all(|&d| strides[d] == 0) {
        return Some(0);
    }
    let last = *live.last()?;
    let row = strides[last];
    let mut expect = row;
    for &d in live.iter().rev() {
        if strides[d] != expect {
            return None;
        }
        expect *= out[d] as i64;
    }
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::{row_stride, split_k, wide_width, EpiRead, Shape};

    #[test]
    fn epilogue_inputs_are_read_by_their_strides() {
        // A 3x3 convolution to [2, 8 channels, 5, 6] NHWC, and a matrix product of 30 rows by 8.
        let conv = Shape {
            rows: 60,
            n: 2,
            h: 5,
            w: 6,
            c: 16,
            m: 8,
            kh: 3,
            kw: 3,
            oh: 5,
            ow: 6,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            ph: 1,
            pw: 1,
            narrow: false,
        };
        let mm = Shape { rows: 30, n: 30, h: 1, w: 1, c: 16, m: 8, kh: 1, kw: 1, oh: 1, ow: 1, ..conv };
        // A bias, a scalar, a residual laid out as the output, and one read NCHW.
        assert_eq!(conv.read(&[0, 0, 0, 1]), EpiRead::Channels);
        assert_eq!(conv.read(&[0, 0, 0, 0]), EpiRead::Channels);
        assert_eq!(conv.read(&[5 * 6 * 8, 6 * 8, 8, 1]), EpiRead::Dense);
        assert_eq!(conv.read(&[8 * 5 * 6, 6, 1, 5 * 6]), EpiRead::Strided);
        // A product's rows are its images: only their stride counts.
        assert_eq!(mm.read(&[8, 0, 0, 1]), EpiRead::Dense);
        assert_eq!(mm.read(&[16, 0, 0, 1]), EpiRead::Strided);
    }

    #[test]
    fn wide_blocks_fill_the_sms_in_whole_rounds() {
        // BERT-base at batch 32 (32 row blocks): the QKV product (2304 channels) and the
        // 768-channel products take 192 channels a block, the FFN input product (3072) keeps
        // 128, which ties; a classifier's few tiles (ResNet-50's, at batch 32) keep 128.
        assert_eq!(wide_width(32, 2304), Some(192));
        assert_eq!(wide_width(32, 768), Some(192));
        assert_eq!(wide_width(32, 3072), None);
        assert_eq!(wide_width(1, 1000), None);
    }

    /// Split-K takes the small grids of ResNet-50's last stages and classifier at batch 32,
    /// and leaves a grid that fills the GPU (BERT-base's products, layer3's 196 blocks) and a
    /// short reduction alone.
    #[test]
    fn small_grids_split_their_reduction() {
        if std::env::var("KILN_IGEMM_SPLIT").is_ok() {
            return; // capped for this run
        }
        // (blocks, block channels, reduction bytes, split)
        for (blocks, bn, k, want) in [
            (104, 64, 4608, 4),  // layer4's 3x3 convolutions: 72 steps, 18 a block
            (104, 64, 2048, 2),  // layer4's 1x1 over 2048 channels: 32 steps, 16 a block
            (8, 128, 2048, 8),   // the classifier: 8 blocks, each of 64 with 4 steps
            (196, 64, 2304, 1),  // layer3's 3x3 convolutions: more blocks than SMs
            (192, 128, 3072, 1), // BERT-base's FFN output product
            (100, 64, 256, 1),   // 4 steps: too short to share
        ] {
            assert_eq!(split_k(blocks, bn, k), want, "{blocks} blocks of {bn} over {k} bytes");
        }
    }

    #[test]
    fn row_strides_fold_the_leading_dims() {
        // A residual [2, 3, 8] over the output [2, 3, 8]: rows 8 apart.
        assert_eq!(row_stride(&[2, 3, 8], &[24, 8, 1]), Some(8));
        // A bias [8]: the same row for every row.
        assert_eq!(row_stride(&[2, 3, 8], &[0, 0, 1]), Some(0));
        // Unit dims carry nothing.
        assert_eq!(row_stride(&[1, 3, 8], &[0, 8, 1]), Some(8));
        // [3, 8] broadcast over a batch of 2 is not one run of rows.
        assert_eq!(row_stride(&[2, 3, 8], &[0, 8, 1]), None);
    }
}
