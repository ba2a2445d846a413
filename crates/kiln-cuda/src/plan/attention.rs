//! ONNX Attention (opset 23) and RotaryEmbedding through `kernels/attention.cu`, and the
//! argument struct the fused attention kernel shares with PackedAttention.
//!
//! Attention is one kernel launch over the operands in place, whatever their layout (4-D
//! `[b, h, s, d]` or 3-D `[b, s, h * d]`), with the mask (additive or bool, shorter than the keys
//! or not), causal masking, soft-capping, key padding (`nonpad_kv_seqlen`), grouped-query heads
//! and a V head size of its own handled by the kernel. A key/value cache is concatenated into
//! `present_key` and `present_value` (outputs, or temporaries when the graph does not use them)
//! by data-movement kernels first, and the kernel reads those. The optional `qk_matmul_output`
//! is a second, simple kernel that recomputes the scores.

use super::*;
use kiln_ir::ops::attention::QkOutputMode;

/// `[batch, heads, seq, head size]` of one Attention operand and its strides.
struct Operand {
    dims: [usize; 4],
    strides: launch::AttnStrides,
    three_d: bool,
}

impl Planner<'_> {
    /// ONNX Attention (opset 23): see the module's documentation.
    pub(super) fn attention(&mut self, id: NodeId, a: &AttentionAttrs) -> Result<()> {
        let node = self.g.node(id);
        if (7..node.num_inputs).any(|s| self.g.inputs_of(id).get(s).copied().flatten().is_some()) {
            return Err(CudaError::Unsupported(format!("Attention with {} inputs (at most 7)", node.num_inputs)));
        }
        let used = |slot: usize| node.outputs.get(slot).is_some_and(|o| !o.name.is_empty());
        let (want_pk, want_pv, want_qk) = (used(1), used(2), used(3));
        let (q, k, v) = (self.required(id, 0)?, self.required(id, 1)?, self.required(id, 2)?);
        let (mask, past_k, past_v, nonpad) =
            (self.input(id, 3)?, self.input(id, 4)?, self.input(id, 5)?, self.input(id, 6)?);
        let dtype = self.plan.buffers[q].dtype;
        let sfx = self.float_suffix(q, "attention")?;
        for (name, b) in [("K", Some(k)), ("V", Some(v)), ("past_key", past_k), ("past_value", past_v)] {
            if let Some(b) = b {
                if self.plan.buffers[b].dtype != dtype {
                    return Err(CudaError::Unsupported(format!(
                        "Attention with Q of {dtype} and {name} of {}",
                        self.plan.buffers[b].dtype
                    )));
                }
            }
        }
        let qo = self.attention_operand(q, "Q", a.q_num_heads, "q_num_heads")?;
        let ko = self.attention_operand(k, "K", a.kv_num_heads, "kv_num_heads")?;
        let vo = self.attention_operand(v, "V", a.kv_num_heads, "kv_num_heads")?;
        let [b, hq, sq, d] = qo.dims;
        let [bk, hk, sk, dk] = ko.dims;
        let [bv, hv, sv, dv] = vo.dims;
        if qo.three_d != ko.three_d || qo.three_d != vo.three_d {
            return Err(CudaError::Invalid("Q, K and V must have the same rank".into()));
        }
        if bk != b || bv != b || hv != hk || sv != sk || dk != d {
            return Err(CudaError::Invalid(format!(
                "K {:?} and V {:?} (as [batch, heads, seq, head size]) do not match Q {:?}",
                ko.dims, vo.dims, qo.dims
            )));
        }
        if hk == 0 || hq % hk != 0 {
            return Err(CudaError::Invalid(format!("{hq} query heads are not a multiple of {hk} key/value heads")));
        }
        // The past sequence length; both caches or neither.
        let past = match (past_k, past_v) {
            (None, None) => 0,
            (Some(pk), Some(pv)) => {
                let (ks, vs) = (&self.plan.buffers[pk].shape, &self.plan.buffers[pv].shape);
                match (ks.as_slice(), vs.as_slice()) {
                    (&[b1, h1, p1, e1], &[b2, h2, p2, e2])
                        if [b1, h1, e1] == [b, hk, d] && [b2, h2, e2] == [b, hk, dv] && p1 == p2 =>
                    {
                        p1
                    }
                    _ => {
                        return Err(CudaError::Invalid(format!(
                            "past_key {ks:?} and past_value {vs:?} must be [{b}, {hk}, past, {d}] and \
                             [{b}, {hk}, past, {dv}]"
                        )))
                    }
                }
            }
            _ => {
                return Err(CudaError::Unsupported(
                    "Attention with only one of past_key and past_value (their lengths differ)".into(),
                ))
            }
        };
        let total = past + sk;
        if total == 0 {
            return Err(CudaError::Unsupported("Attention over zero keys".into()));
        }
        let y = self.out(id, 0)?;
        // K and V as the kernel reads them: in place, or the caches concatenated with them.
        let (kb, ks) = if past_k.is_some() || want_pk {
            let pk =
                if want_pk { self.out(id, 1)? } else { self.cache_temp(id, "present_key", dtype, [b, hk, total, d]) };
            self.fill_cache(id, past_k, k, &ko, past, pk)?;
            (pk, launch::AttnStrides::bhsd(hk, total, d))
        } else {
            (k, ko.strides)
        };
        let (vb, vs) = if past_v.is_some() || want_pv {
            let pv = if want_pv {
                self.out(id, 2)?
            } else {
                self.cache_temp(id, "present_value", dtype, [b, hk, total, dv])
            };
            self.fill_cache(id, past_v, v, &vo, past, pv)?;
            (pv, launch::AttnStrides::bhsd(hk, total, dv))
        } else {
            (v, vo.strides)
        };
        let (mask_strides, mask_len, mask_bool) = self.attention_mask(mask, dtype, [b, hq, sq, total])?;
        if let Some(n) = nonpad {
            let nb = &self.plan.buffers[n];
            if nb.dtype != DType::I64 || nb.shape != [b] {
                return Err(CudaError::Unsupported(format!(
                    "nonpad_kv_seqlen of {} {:?} (the kernel takes i64 [{b}])",
                    nb.dtype, nb.shape
                )));
            }
        }
        let os = if qo.three_d {
            launch::AttnStrides::bshd(hq, sq, dv, hq * dv)
        } else {
            launch::AttnStrides::bhsd(hq, sq, dv)
        };
        let scale = a.scale.unwrap_or(1.0 / (d as f32).sqrt());
        let mut args = launch::AttnArgs::new(b, hq, sq, total, d, dv, [qo.strides, ks, vs, os], scale);
        args.mask = mask_strides;
        args.mask_len = mask_len as i64;
        args.mask_bool = mask_bool;
        args.kv_group = (hq / hk) as i64;
        args.causal = a.is_causal.then_some(past as i64);
        args.softcap = a.softcap;
        let ptr = |buffer: BufferId| Field::Ptr { buffer, offset_bytes: 0 };
        let (o, quant) = self.attention_output(id, &args, sfx, y)?;
        let operands = [ptr(q), ptr(kb), ptr(vb), o];
        if b * hq * sq * dv > 0 {
            self.launch_attention(id, &args, sfx, operands.clone(), mask, nonpad, quant)?;
        }
        if want_qk {
            let out = self.out(id, 3)?;
            if self.plan.buffers[out].shape != [b, hq, sq, total] {
                return Err(CudaError::Invalid(format!(
                    "qk_matmul_output is {:?}, not [{b}, {hq}, {sq}, {total}]",
                    self.plan.buffers[out].shape
                )));
            }
            let mode = match a.qk_matmul_output_mode {
                QkOutputMode::Scores => 0,
                QkOutputMode::Masked => 1,
                QkOutputMode::Softcapped => 2,
                QkOutputMode::Probabilities => 3,
            };
            let rows = b * hq * sq;
            if rows > 0 {
                let fields = attention_fields(&args, operands, mask, nonpad, None);
                self.kernel(
                    id,
                    KernelFamily::Attention,
                    format!("attention_scores_{sfx}"),
                    launch::per_row(rows as u64, total as u64),
                    vec![Arg::Struct(fields), Arg::Buffer(out), Arg::I32(mode)],
                );
            }
        }
        Ok(())
    }

    /// The `[batch, heads, seq, head size]` view of Q, K or V and its strides.
    fn attention_operand(&self, x: BufferId, name: &str, heads: Option<usize>, attr: &str) -> Result<Operand> {
        let sh = &self.plan.buffers[x].shape;
        match (sh.as_slice(), heads) {
            (&[n, h, s, e], _) => {
                Ok(Operand { dims: [n, h, s, e], strides: launch::AttnStrides::bhsd(h, s, e), three_d: false })
            }
            (&[n, s, w], Some(h)) if h > 0 && w % h == 0 => Ok(Operand {
                dims: [n, h, s, w / h],
                strides: launch::AttnStrides::bshd(h, s, w / h, w),
                three_d: true,
            }),
            (&[_, _, w], Some(h)) => {
                Err(CudaError::Invalid(format!("the hidden size {w} of {name} is not a multiple of {attr} = {h}")))
            }
            (&[_, _, _], None) => Err(CudaError::Invalid(format!("3-D {name} needs the attribute {attr}"))),
            _ => Err(CudaError::Invalid(format!("{name} must be 3-D or 4-D, found {sh:?}"))),
        }
    }

    fn cache_temp(&mut self, id: NodeId, what: &str, dtype: DType, dims: [usize; 4]) -> BufferId {
        let name = format!("{}.{what}", self.g.node(id).name);
        self.temp(name, dtype, dims.to_vec())
    }

    /// Writes `concat(past, new)` along the sequence axis into the `[b, h, past + s, e]` buffer
    /// `dest`, with `new` read through its strides (3-D operands are transposed first).
    fn fill_cache(
        &mut self,
        id: NodeId,
        past: Option<BufferId>,
        new: BufferId,
        op: &Operand,
        past_len: usize,
        dest: BufferId,
    ) -> Result<()> {
        let [b, h, s, e] = op.dims;
        let total = past_len + s;
        if self.plan.buffers[dest].shape != [b, h, total, e] {
            return Err(CudaError::Invalid(format!(
                "a present output is {:?}, not [{b}, {h}, {total}, {e}]",
                self.plan.buffers[dest].shape
            )));
        }
        let st = op.strides;
        let strides = [st.batch, st.head, st.row, 1];
        let Some(past) = past else {
            return self.permute_launch(id, new, dest, &op.dims, &strides, 0);
        };
        self.copy_rows_launch(id, past, dest, b * h, past_len * e, past_len * e, total * e, 0)?;
        let src = if op.three_d {
            let t = self.cache_temp(id, "heads_first", self.plan.buffers[new].dtype, op.dims);
            self.permute_launch(id, new, t, &op.dims, &strides, 0)?;
            t
        } else {
            new
        };
        self.copy_rows_launch(id, src, dest, b * h, s * e, s * e, total * e, past_len * e)
    }

    /// `dest[r * dst_stride + dst_off + j] = src[r * src_stride + j]` for `j < len`.
    #[allow(clippy::too_many_arguments)]
    fn copy_rows_launch(
        &mut self,
        id: NodeId,
        src: BufferId,
        dest: BufferId,
        rows: usize,
        len: usize,
        src_stride: usize,
        dst_stride: usize,
        dst_off: usize,
    ) -> Result<()> {
        if rows * len == 0 {
            return Ok(());
        }
        let w = self.width(dest)?;
        let args = [src, dest]
            .map(Arg::Buffer)
            .into_iter()
            .chain([rows, len, src_stride, 0, dst_stride, dst_off].map(|v| Arg::I64(v as i64)));
        self.kernel(
            id,
            KernelFamily::Layout,
            format!("copy_rows_{w}"),
            launch::grid_stride((rows * len) as u64),
            args.collect(),
        );
        Ok(())
    }

    /// An attention mask's strides over `dims` (`[batch, heads, sq, keys]`, 0 where it
    /// broadcasts), the keys it covers (its last dim; later keys are masked out) and whether it
    /// is bool. An additive mask must have the operands' type.
    pub(super) fn attention_mask(
        &self,
        mask: Option<BufferId>,
        dtype: DType,
        dims: [usize; 4],
    ) -> Result<([i64; 4], usize, bool)> {
        let Some(m) = mask else { return Ok(([0; 4], dims[3], false)) };
        let mb = &self.plan.buffers[m];
        let is_bool = mb.dtype == DType::Bool;
        if !is_bool && mb.dtype != dtype {
            return Err(CudaError::Unsupported(format!(
                "an attention mask of {} with {dtype} inputs; cast it first",
                mb.dtype
            )));
        }
        let Some(&len) = mb.shape.last() else {
            return Err(CudaError::Invalid("the attention mask is a scalar (it must have rank 2 to 4)".into()));
        };
        if len > dims[3] {
            return Err(CudaError::Invalid(format!("the attention mask covers {len} keys of {}", dims[3])));
        }
        let st = crate::codegen::broadcast_strides(&mb.shape, &[dims[0], dims[1], dims[2], len])?;
        Ok(([st[0], st[1], st[2], st[3]], len, is_bool))
    }

    /// The output operand of attention `id` (output buffer `y`) and its quantized copy: the
    /// tensor-core kernel whose output a QuantizeLinear (to i8, by a constant) reads writes
    /// the i8 copy itself, bit for bit what the quantize gives (the quantize node is then
    /// absorbed), and leaves out the float one where nothing else reads it (an INT8 network's
    /// attention, read by its output projection).
    pub(super) fn attention_output(
        &mut self,
        id: NodeId,
        args: &launch::AttnArgs,
        sfx: &str,
        y: BufferId,
    ) -> Result<(Field, Option<(BufferId, f32, f32)>)> {
        let o = Field::Ptr { buffer: y, offset_bytes: 0 };
        let v = Value { node: id, slot: 0 };
        let quantized = match args.launch(sfx) {
            Ok((kernel, _)) if kernel.starts_with("attention_mma") => self.quantize_reader(v),
            _ => None,
        };
        let Some((quantize, c, r)) = quantized else { return Ok((o, None)) };
        let oq = self.out(quantize, 0)?;
        self.absorbed.insert(quantize);
        let read_otherwise = self.g.is_output(v) || self.g.users(v).iter().any(|&(u, _)| u != quantize);
        Ok((if read_otherwise { o } else { Field::Null }, Some((oq, c, r))))
    }

    /// Launches the fused attention kernel for `args` (whose `ptrs` are left to the runtime):
    /// Q, K, V and the output as `operands`, then the mask and `nonpad_kv_seqlen`, and the
    /// quantized output (`quant`: its buffer, scale and the scale's reciprocal), for which the
    /// `attention_mma_q_*` instantiation runs.
    pub(super) fn launch_attention(
        &mut self,
        id: NodeId,
        args: &launch::AttnArgs,
        sfx: &str,
        operands: [Field; 4],
        mask: Option<BufferId>,
        nonpad: Option<BufferId>,
        quant: Option<(BufferId, f32, f32)>,
    ) -> Result<()> {
        let (mut kernel, config) = args.launch(sfx)?;
        // The instantiation that stores the quantized output too.
        if quant.is_some() {
            kernel = kernel.replacen("attention_mma_", "attention_mma_q_", 1);
        }
        let fields = attention_fields(args, operands, mask, nonpad, quant);
        self.kernel(id, KernelFamily::Attention, kernel, config, vec![Arg::Struct(fields)]);
        Ok(())
    }

    /// RotaryEmbedding (opset 23) on 4-D `[b, h, s, d]` or 3-D `[b, s, h * d]` X, with
    /// `position_ids` read at run time (an id outside the cache fails the run) or the caches
    /// indexed by batch and position.
    pub(super) fn rotary(
        &mut self,
        id: NodeId,
        interleaved: bool,
        rotary_dim: usize,
        num_heads: Option<usize>,
    ) -> Result<()> {
        let (x, cos, sin) = (self.required(id, 0)?, self.required(id, 1)?, self.required(id, 2)?);
        let pos = self.input(id, 3)?;
        let dtype = self.plan.buffers[x].dtype;
        let sfx = self.float_suffix(x, "rotary")?;
        for (name, c) in [("cos_cache", cos), ("sin_cache", sin)] {
            if self.plan.buffers[c].dtype != dtype {
                return Err(CudaError::Unsupported(format!(
                    "RotaryEmbedding of {dtype} with {name} of {}",
                    self.plan.buffers[c].dtype
                )));
            }
        }
        let xs = self.plan.buffers[x].shape.clone();
        let (b, s, h, d, heads_first) = match (xs.as_slice(), num_heads) {
            (&[b, h, s, d], _) => (b, s, h, d, true),
            (&[b, s, w], Some(h)) if h > 0 && w % h == 0 => (b, s, h, w / h, false),
            _ => {
                return Err(CudaError::Invalid(format!(
                    "X {xs:?} is neither [batch, heads, seq, head size] nor [batch, seq, hidden] with \
                     num_heads ({num_heads:?}) dividing the hidden size"
                )))
            }
        };
        let rd = if rotary_dim == 0 { d } else { rotary_dim };
        if rd > d || rd % 2 != 0 {
            return Err(CudaError::Invalid(format!(
                "rotary_embedding_dim {rd} must be even and at most the head size {d}"
            )));
        }
        let half = rd / 2;
        let cs = self.plan.buffers[cos].shape.clone();
        if self.plan.buffers[sin].shape != cs {
            return Err(CudaError::Invalid(format!(
                "cos_cache {cs:?} and sin_cache {:?} must have the same shape",
                self.plan.buffers[sin].shape
            )));
        }
        let (cache_sb, max_pos) = match (pos, cs.as_slice()) {
            (Some(p), &[n, w]) if w == half => {
                let pb = &self.plan.buffers[p];
                if pb.dtype != DType::I64 || pb.shape != [b, s] {
                    return Err(CudaError::Unsupported(format!(
                        "position_ids of {} {:?} (the kernel takes i64 [{b}, {s}])",
                        pb.dtype, pb.shape
                    )));
                }
                (0, n)
            }
            (None, &[cb, cs2, w]) if (cb == b || cb == 1) && cs2 == s && w == half => {
                (if cb == 1 { 0 } else { s }, cb * s)
            }
            _ => {
                return Err(CudaError::Invalid(format!(
                    "cos_cache {cs:?} must be [max_position, {half}] with position_ids, [{b} or 1, {s}, {half}] \
                     without"
                )))
            }
        };
        let y = self.out(id, 0)?;
        let n = b * s * h * d;
        if n == 0 {
            return Ok(());
        }
        let err = match pos {
            Some(_) => {
                let name = format!("{}.position_error", self.g.node(id).name);
                let e = self.temp(name, DType::I32, vec![1]);
                let message =
                    format!("RotaryEmbedding {}: a position id is outside [0, {max_pos})", self.g.node(id).name);
                self.plan.error_flags.push((e, message));
                Arg::Buffer(e)
            }
            None => Arg::Null,
        };
        let p = launch::RopeArgs {
            n: n as i64,
            seq: s as i64,
            heads: h as i64,
            dh: d as i64,
            heads_first,
            rd: rd as i64,
            interleaved,
            cache_sb: cache_sb as i64,
            max_pos: max_pos as i64,
        };
        let args = vec![
            Arg::Buffer(x),
            Arg::Buffer(cos),
            Arg::Buffer(sin),
            pos.map_or(Arg::Null, Arg::Buffer),
            Arg::Buffer(y),
            Arg::Struct(p.words().map(Field::I64).to_vec()),
            err,
        ];
        self.kernel(id, KernelFamily::Attention, format!("rotary_{sfx}"), launch::grid_stride(n as u64), args);
        Ok(())
    }
}

/// The fields of `AttnArgs` in `attention.cu`'s order, with the operands' and the optional
/// mask's and `nonpad_kv_seqlen`'s buffers in place of `args.ptrs`.
fn attention_fields(
    args: &launch::AttnArgs,
    operands: [Field; 4],
    mask: Option<BufferId>,
    nonpad: Option<BufferId>,
    quant: Option<(BufferId, f32, f32)>,
) -> Vec<Field> {
    let ptr = |b: Option<BufferId>| b.map_or(Field::Null, |buffer| Field::Ptr { buffer, offset_bytes: 0 });
    let mut fields = operands.to_vec();
    fields.push(ptr(mask));
    fields.extend(args.sizes_and_strides().into_iter().map(Field::I64));
    let kind = match (mask.is_some(), args.mask_bool) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    };
    fields.push(Field::F32I32(args.scale, kind));
    fields.push(ptr(nonpad));
    fields.extend(args.tail().map(Field::I64));
    fields.push(Field::F32I32(args.softcap, args.causal.is_some() as i32));
    // The quantized output, its scale and the scale's reciprocal (`oq`, `oq_c`, `oq_r`: two
    // floats, the second passed by its bits).
    let (oq, c, r) = quant.map_or((None, 0.0, 0.0), |(b, c, r)| (Some(b), c, r));
    fields.push(ptr(oq));
    fields.push(Field::F32I32(c, r.to_bits() as i32));
    fields
}
