//! One case per rewrite rule: a start graph and the graph it must become (and, in `check`,
//! the same numbers on the CPU reference).

mod common;
use common::{check, check_fires};

// ---- cleanup -------------------------------------------------------------------------------

#[test]
fn identity_goes() {
    check_fires(
        &["identity"],
        "input x f32[2,3]
         a = Identity(x)
         y = Relu(a)
         output y",
        "%0 = Relu(x)
         output %0",
    );
}

#[test]
fn double_negation_goes() {
    check_fires(
        &["neg-neg"],
        "input x f32[2,3]
         a = Neg(x)
         b = Neg(a)
         y = Relu(b)
         output y",
        "%0 = Relu(x)
         output %0",
    );
}

#[test]
fn relu_of_relu_is_relu() {
    check_fires(
        &["relu-relu"],
        "input x f32[2,3]
         a = Relu(x)
         y = Relu(a)
         output y",
        "%0 = Relu(x)
         output %0",
    );
}

#[test]
fn multiply_by_minus_one_is_negation() {
    check_fires(
        &["mul-minus-one"],
        "input x f32[2,3]
         m = const f32[] -1.0
         a = Mul(x, m)
         output a",
        "%0 = Neg(x)
         output %0",
    );
}

#[test]
fn multiply_by_one_and_add_zero_go() {
    check_fires(
        &["one-mul", "add-zero", "div-one", "sub-zero"],
        "input x f32[2,3]
         one = const f32[] 1.0
         zero = const f32[3] 0.0
         a = Mul(one, x)
         b = Add(a, zero)
         c = Div(b, one)
         d = Sub(c, zero)
         y = Relu(d)
         output y",
        "%0 = Relu(x)
         output %0",
    );
}

#[test]
fn multiply_by_one_that_broadcasts_stays() {
    // x * ones[4,2,3] has a bigger shape than x: not a no-op.
    check(
        "input x f32[2,3]
         one = const f32[4,2,3] 1.0
         y = Mul(x, one)
         output y",
        "%0 = Mul(x, const[4, 2, 3])
         output %0",
    );
}

#[test]
fn transposes_compose_and_cancel() {
    check_fires(
        &["transpose-transpose"],
        "input x f32[2,3,4]
         a = Transpose{1,0,2}(x)
         b = Transpose{1,0,2}(a)
         c = Transpose{0,2,1}(b)
         d = Transpose{2,0,1}(c)
         output d",
        "%0 = Transpose(x)
         output %0",
    );
}

#[test]
fn reshape_chain_becomes_one_reshape() {
    check_fires(
        &["reshape-reshape"],
        "input x f32[2,3,4]
         s1 = const i64[2] 6,4
         s2 = const i64[2] 4,6
         a = Reshape(x, s1)
         b = Reshape(a, s2)
         y = Relu(b)
         output y",
        "%0 = Reshape(x, const[2])
         %1 = Relu(%0)
         output %1",
    );
}

#[test]
fn noop_casts_and_lossless_cast_chains_go() {
    check_fires(
        &["cast-cast", "cast-noop"],
        "input x f16[2,3]
         a = Cast{f32}(x)
         b = Cast{f16}(a)
         c = Cast{f16}(b)
         y = Relu(c)
         output y",
        "%0 = Relu(x)
         output %0",
    );
}

#[test]
fn lossy_cast_chain_stays() {
    // f32 -> f16 -> f32 rounds: it is not the identity.
    check_fires(
        &["fuse-elementwise"],
        "input x f32[2,3]
         a = Cast{f16}(x)
         b = Cast{f32}(a)
         output b",
        "%0 = FusedElementwise[Cast<f32>(Cast<f16>(in0))](x)
         output %0",
    );
}

#[test]
fn squeeze_of_unsqueeze_goes() {
    check_fires(
        &["squeeze-unsqueeze-attr"],
        "input x f32[2,3]
         a = Unsqueeze{0}(x)
         b = Squeeze{0}(a)
         y = Relu(b)
         output y",
        "%0 = Relu(x)
         output %0",
    );
}

// ---- constant work -------------------------------------------------------------------------

#[test]
fn batchnorm_folds_into_conv() {
    check_fires(
        &["conv-bn"],
        "input x f32[1,3,8,8]
         w = const f32[4,3,3,3] rand
         s = const f32[4] pos
         b = const f32[4] rand
         m = const f32[4] rand
         v = const f32[4] pos
         c = Conv{1}(x, w)
         y = BatchNormalization(c, s, b, m, v)
         output y",
        "%0 = Conv(x, const[4, 3, 3, 3], const[4])
         output %0",
    );
}

#[test]
fn batchnorm_folds_into_gemm() {
    check_fires(
        &["conv-bn"],
        "input x f32[2,5]
         w = const f32[4,5] rand
         c0 = const f32[4] rand
         s = const f32[4] pos
         b = const f32[4] rand
         m = const f32[4] rand
         v = const f32[4] pos
         g = Gemm{transB}(x, w, c0)
         y = BatchNormalization(g, s, b, m, v)
         output y",
        "%0 = Gemm(x, const[4, 5], const[4])
         output %0",
    );
}

#[test]
fn lone_batchnorm_becomes_a_multiply_add() {
    check_fires(
        &["bn-affine", "fuse-elementwise"],
        "input x f32[1,4,5,5]
         s = const f32[4] pos
         b = const f32[4] rand
         m = const f32[4] rand
         v = const f32[4] pos
         y = BatchNormalization(x, s, b, m, v)
         output y",
        "%0 = FusedElementwise[((in0 * in1) + in2)](x, const[4, 1, 1], const[4, 1, 1])
         output %0",
    );
}

#[test]
fn per_channel_scale_and_shift_fold_into_conv() {
    check_fires(
        &["const-mul-conv", "conv-add-const"],
        "input x f32[1,3,6,6]
         w = const f32[4,3,3,3] rand
         bias = const f32[4] rand
         k = const f32[4,1,1] rand
         d = const f32[1,4,1,1] rand
         c = Conv{1}(x, w, bias)
         a = Mul(k, c)
         y = Add(a, d)
         output y",
        "%0 = Conv(x, const[4, 3, 3, 3], const[4])
         output %0",
    );
}

// ---- elementwise ---------------------------------------------------------------------------

#[test]
fn a_chain_of_pointwise_ops_is_one_node() {
    check_fires(
        &["fuse-elementwise"],
        "input x f32[2,3]
         input y f32[3]
         half = const f32[] 0.5
         a = Add(x, y)
         b = Mul(a, half)
         c = Tanh(b)
         d = Sigmoid(c)
         output d",
        "%0 = FusedElementwise[Sigmoid(Tanh(((in0 + in1) * 0.5)))](x, y)
         output %0",
    );
}

#[test]
fn a_shared_intermediate_is_not_recomputed() {
    // `a` is an output too, so it is stored anyway; fusing its Add into each consumer would
    // only make both read x and y instead of `a`. The rules leave a stored value alone.
    check(
        "input x f32[64,1024]
         input y f32[64,1024]
         a = Add(x, y)
         b = Relu(a)
         c = Sigmoid(a)
         output a b c",
        "%0 = Add(x, y)
         %1 = Relu(%0)
         %2 = Sigmoid(%0)
         output %0, %1, %2",
    );
}

#[test]
fn a_value_read_by_a_matrix_op_is_not_fused_into_pointwise_consumers() {
    // `a` feeds the MatMul, so it is stored whatever happens: the Relu reads it (inside the
    // MatMul's epilogue) rather than recomputing x + y.
    check_fires(
        &["gemm-epilogue"],
        "input x f32[4,8]
         input y f32[4,8]
         w = const f32[8,8] rand
         a = Add(x, y)
         m = MatMul(a, w)
         r = Relu(a)
         o = Add(m, r)
         output o",
        "%0 = Add(x, y)
         %1 = MatMulEpilogue[(in0 + Relu(in1))](%0, const[8, 8], %0)
         output %1",
    );
}

// ---- epilogues -----------------------------------------------------------------------------

#[test]
fn an_epilogue_absorbs_the_producer_of_its_residual() {
    // A second fusion (of an INT8 FP16 build, after FP16 conversion) finds an epilogue whose
    // residual is an f16 value cast to f32: the epilogue reads the f16 value and casts it.
    check_fires(
        &["epilogue-input"],
        "input a f32[4,8]
         input h f16[4,5]
         w = const f32[8,5] rand
         c = Cast{f32}(h)
         o = MatMulEpilogue{add}(a, w, c)
         output o",
        "%0 = MatMulEpilogue[(in0 + Cast<f32>(in1))](a, const[8, 5], h)
         output %0",
    );
}

#[test]
fn conv_bias_residual_relu_is_one_node() {
    check_fires(
        &["conv-add-const", "gemm-epilogue"],
        "input x f32[1,4,6,6]
         w = const f32[4,4,3,3] rand
         b = const f32[4,1,1] rand
         c = Conv{1}(x, w)
         cb = Add(c, b)
         r = Add(cb, x)
         y = Relu(r)
         output y",
        "%0 = ConvEpilogue[Relu((in0 + in1))](x, const[4, 4, 3, 3], const[4], x)
         output %0",
    );
}

#[test]
fn matmul_bias_gelu_erf_is_one_node() {
    check_fires(
        &["gemm-epilogue", "fuse-elementwise"],
        "input x f32[2,8,16]
         w = const f32[16,32] rand
         b = const f32[32] rand
         sqrt2 = const f32[] 1.4142135
         one = const f32[] 1.0
         half = const f32[] 0.5
         mm = MatMul(x, w)
         h = Add(b, mm)
         s = Div(h, sqrt2)
         e = Erf(s)
         e1 = Add(e, one)
         g1 = Mul(h, e1)
         y = Mul(g1, half)
         output y",
        "%0 = MatMulEpilogue[(((in1 + in0) * (Erf(((in1 + in0) / 1.4142135)) + 1)) * 0.5)](x, const[16, 32], const[32])
         output %0",
    );
}

#[test]
fn conv_silu_is_one_node() {
    check_fires(
        &["fuse-elementwise", "gemm-epilogue"],
        "input x f32[1,3,6,6]
         w = const f32[4,3,3,3] rand
         c = Conv{1}(x, w)
         s = Sigmoid(c)
         y = Mul(c, s)
         output y",
        "%0 = ConvEpilogue[(in0 * Sigmoid(in0))](x, const[4, 3, 3, 3])
         output %0",
    );
}

#[test]
fn gemm_with_clip_and_leaky_relu_epilogues() {
    check_fires(
        &["gemm-epilogue"],
        "input x f32[4,8]
         w = const f32[8,6] rand
         a = Gemm(x, w)
         b = Clip{0,6}(a)
         y = LeakyRelu{0.1}(b)
         output y",
        "%0 = GemmEpilogue[LeakyRelu(Clip<0,6>(in0))](x, const[8, 6])
         output %0",
    );
}

#[test]
fn a_shared_convolution_is_computed_once() {
    // Node counting would pick two epilogue nodes, each recomputing the convolution; the
    // cost model sees the convolution's arithmetic and keeps one Conv with two cheap consumers.
    check_fires(
        &["gemm-epilogue"],
        "input x f32[8,64,56,56]
         w = const f32[64,64,3,3] rand
         c = Conv{1}(x, w)
         a = Relu(c)
         b = Sigmoid(c)
         output a b",
        "%0 = Conv(x, const[64, 64, 3, 3])
         %1 = Relu(%0)
         %2 = Sigmoid(%0)
         output %1, %2",
    );
}

#[test]
fn a_tiny_shared_matmul_is_recomputed_rather_than_stored() {
    // The opposite trade: when the matrix op is tiny, launches dominate, and two epilogue
    // nodes (the product computed twice) beat three nodes.
    check_fires(
        &["gemm-epilogue"],
        "input x f32[2,4]
         w = const f32[4,4] rand
         c = MatMul(x, w)
         a = Relu(c)
         b = Sigmoid(c)
         output a b",
        "%0 = MatMulEpilogue[Relu(in0)](x, const[4, 4])
         %1 = MatMulEpilogue[Sigmoid(in0)](x, const[4, 4])
         output %0, %1",
    );
}

// ---- normalization -------------------------------------------------------------------------

#[test]
fn decomposed_layernorm_is_one_node() {
    check_fires(
        &["layernorm"],
        "input x f32[2,4,16]
         two = const f32[] 2.0
         eps = const f32[] 0.00001
         g = const f32[16] rand
         b = const f32[16] rand
         mean = ReduceMean{-1}(x)
         d = Sub(x, mean)
         sq = Pow(d, two)
         var = ReduceMean{-1}(sq)
         ve = Add(var, eps)
         sd = Sqrt(ve)
         n = Div(d, sd)
         ng = Mul(n, g)
         y = Add(ng, b)
         output y",
        "%0 = LayerNormalization(x, const[16], const[16])
         output %0",
    );
}

#[test]
fn decomposed_layernorm_with_unit_scale_and_zero_shift_is_one_node() {
    // A freshly initialized LayerNorm exports gamma = 1 and beta = 0; clean-up removes the
    // multiply and the add before the norm rules look.
    check_fires(
        &["layernorm-bare", "mul-one", "add-zero"],
        "input x f32[2,4,16]
         two = const f32[] 2.0
         eps = const f32[] 0.00001
         g = const f32[16] 1.0
         b = const f32[16] 0.0
         mean = ReduceMean{-1}(x)
         d = Sub(x, mean)
         sq = Pow(d, two)
         var = ReduceMean{-1}(sq)
         ve = Add(var, eps)
         sd = Sqrt(ve)
         n = Div(d, sd)
         ng = Mul(n, g)
         y = Add(ng, b)
         output y",
        "%0 = LayerNormalization(x, const[16])
         output %0",
    );
}

#[test]
fn decomposed_rmsnorm_is_one_node() {
    check_fires(
        &["rmsnorm"],
        "input x f32[2,4,16]
         two = const f32[] 2.0
         eps = const f32[] 0.000001
         g = const f32[16] rand
         sq = Pow(x, two)
         ms = ReduceMean{-1}(sq)
         a = Add(ms, eps)
         s = Sqrt(a)
         r = Reciprocal(s)
         n = Mul(x, r)
         y = Mul(g, n)
         output y",
        "%0 = RMSNormalization(x, const[16])
         output %0",
    );
}

#[test]
fn decomposed_softmax_is_softmax() {
    check_fires(
        &["softmax"],
        "input x f32[3,10]
         m = ReduceMax{-1}(x)
         d = Sub(x, m)
         e = Exp(d)
         s = ReduceSum{-1}(e)
         y = Div(e, s)
         output y",
        "%0 = Softmax(x)
         output %0",
    );
}

// ---- attention -----------------------------------------------------------------------------

#[test]
fn scaled_dot_product_attention_is_one_node() {
    check_fires(
        &["attention"],
        "input q f32[2,4,8,16]
         input k f32[2,4,8,16]
         input v f32[2,4,8,16]
         input mask f32[2,1,1,8]
         scale = const f32[] 4.0
         kt = Transpose{0,1,3,2}(k)
         s = MatMul(q, kt)
         sc = Div(s, scale)
         sm = Add(sc, mask)
         p = Softmax{-1}(sm)
         y = MatMul(p, v)
         output y",
        "%0 = Attention(q, k, v, mask)
         output %0",
    );
}

#[test]
fn attention_with_head_split_and_packed_projections_is_two_nodes() {
    check_fires(
        &["attention", "attention-heads", "attention-packed"],
        "input x f32[2,8,32]
         input mask f32[2,1,1,8]
         wq = const f32[32,32] rand
         wk = const f32[32,32] rand
         wv = const f32[32,32] rand
         bq = const f32[32] rand
         bk = const f32[32] rand
         bv = const f32[32] rand
         hs = const i64[4] 2,8,2,16
         ms = const i64[3] 2,8,32
         scale = const f32[] 4.0
         q0 = MatMul(x, wq)
         q1 = Add(q0, bq)
         k0 = MatMul(x, wk)
         k1 = Add(bk, k0)
         v0 = MatMul(x, wv)
         v1 = Add(v0, bv)
         qr = Reshape(q1, hs)
         kr = Reshape(k1, hs)
         vr = Reshape(v1, hs)
         qh = Transpose{0,2,1,3}(qr)
         kh = Transpose{0,2,1,3}(kr)
         vh = Transpose{0,2,1,3}(vr)
         kt = Transpose{0,1,3,2}(kh)
         s = MatMul(qh, kt)
         sc = Div(s, scale)
         sm = Add(sc, mask)
         p = Softmax{-1}(sm)
         c = MatMul(p, vh)
         ct = Transpose{0,2,1,3}(c)
         y = Reshape(ct, ms)
         output y",
        "%0 = MatMulEpilogue[(in0 + in1)](x, const[32, 96], const[96])
         %1 = PackedAttention(%0, mask)
         output %1",
    );
}

// ---- the rest of each family's operand orders and forms ----------------------------------

#[test]
fn int8_projections_pack_into_one_integer_product() {
    // Q, K and V as the quantizer writes them (per-column weight scales) over one quantized x:
    // one MatMulInteger epilogue over the joined weights, scales and biases.
    check_fires(
        &["qdq-matmul", "attention", "attention-heads", "attention-packed-int8"],
        "input x f32[2,8,32]
         input mask f32[2,1,1,8]
         xs = const f32[] 0.02
         wq = const i8[32,32] rand
         wk = const i8[32,32] rand
         wv = const i8[32,32] rand
         sq = const f32[32] rand
         sk = const f32[32] rand
         sv = const f32[32] rand
         bq = const f32[32] rand
         bk = const f32[32] rand
         bv = const f32[32] rand
         hs = const i64[4] 2,8,2,16
         ms = const i64[3] 2,8,32
         scale = const f32[] 4.0
         xq = QuantizeLinear(x, xs)
         xd = DequantizeLinear(xq, xs)
         wqd = DequantizeLinear{1}(wq, sq)
         wkd = DequantizeLinear{1}(wk, sk)
         wvd = DequantizeLinear{1}(wv, sv)
         q0 = MatMul(xd, wqd)
         q1 = Add(q0, bq)
         k0 = MatMul(xd, wkd)
         k1 = Add(k0, bk)
         v0 = MatMul(xd, wvd)
         v1 = Add(v0, bv)
         qr = Reshape(q1, hs)
         kr = Reshape(k1, hs)
         vr = Reshape(v1, hs)
         qh = Transpose{0,2,1,3}(qr)
         kh = Transpose{0,2,1,3}(kr)
         vh = Transpose{0,2,1,3}(vr)
         kt = Transpose{0,1,3,2}(kh)
         s = MatMul(qh, kt)
         sc = Div(s, scale)
         sm = Add(sc, mask)
         p = Softmax{-1}(sm)
         c = MatMul(p, vh)
         ct = Transpose{0,2,1,3}(c)
         y = Reshape(ct, ms)
         output y",
        "%0 = QuantizeLinear(x, const[])
         %1 = MatMulIntegerEpilogue[((Cast<f32>(in0) * in1) + in2)](%0, const[32, 96], _, _, const[96], const[96])
         %2 = PackedAttention(%1, mask)
         output %2",
    );
    check_fires(
        &["attention-packed-int8-nomask"],
        "input x f32[2,8,32]
         xs = const f32[] 0.02
         wq = const i8[32,32] rand
         wk = const i8[32,32] rand
         wv = const i8[32,32] rand
         sq = const f32[32] rand
         sk = const f32[32] rand
         sv = const f32[32] rand
         bq = const f32[32] rand
         bk = const f32[32] rand
         bv = const f32[32] rand
         hs = const i64[4] 2,8,2,16
         ms = const i64[3] 2,8,32
         scale = const f32[] 4.0
         xq = QuantizeLinear(x, xs)
         xd = DequantizeLinear(xq, xs)
         wqd = DequantizeLinear{1}(wq, sq)
         wkd = DequantizeLinear{1}(wk, sk)
         wvd = DequantizeLinear{1}(wv, sv)
         q0 = MatMul(xd, wqd)
         q1 = Add(q0, bq)
         k0 = MatMul(xd, wkd)
         k1 = Add(k0, bk)
         v0 = MatMul(xd, wvd)
         v1 = Add(v0, bv)
         qr = Reshape(q1, hs)
         kr = Reshape(k1, hs)
         vr = Reshape(v1, hs)
         qh = Transpose{0,2,1,3}(qr)
         kh = Transpose{0,2,1,3}(kr)
         vh = Transpose{0,2,1,3}(vr)
         kt = Transpose{0,1,3,2}(kh)
         s = MatMul(qh, kt)
         sc = Div(s, scale)
         p = Softmax{-1}(sc)
         c = MatMul(p, vh)
         ct = Transpose{0,2,1,3}(c)
         y = Reshape(ct, ms)
         output y",
        "%0 = QuantizeLinear(x, const[])
         %1 = MatMulIntegerEpilogue[((Cast<f32>(in0) * in1) + in2)](%0, const[32, 96], _, _, const[96], const[96])
         %2 = PackedAttention(%1)
         output %2",
    );
}

#[test]
fn zero_plus_x_is_x() {
    check_fires(
        &["zero-add"],
        "input x f32[2,3]
         zero = const f32[] 0.0
         a = Add(zero, x)
         y = Relu(a)
         output y",
        "%0 = Relu(x)
         output %0",
    );
}

#[test]
fn reshape_and_flatten_to_the_same_shape_go() {
    check_fires(
        &["reshape-noop", "flatten-noop"],
        "input x f32[2,3]
         s = const i64[2] 2,3
         a = Reshape(x, s)
         b = Flatten{1}(a)
         y = Relu(b)
         output y",
        "%0 = Relu(x)
         output %0",
    );
}

#[test]
fn squeeze_and_unsqueeze_with_axes_inputs_cancel() {
    check_fires(
        &["squeeze-unsqueeze", "unsqueeze-squeeze"],
        "input x f32[2,3]
         input z f32[1,4]
         ax = const i64[1] 0
         a = Unsqueeze(x, ax)
         b = Squeeze(a, ax)
         c = Squeeze(z, ax)
         d = Unsqueeze(c, ax)
         y = Relu(b)
         w = Relu(d)
         output y w",
        "%0 = Relu(x)
         %1 = Relu(z)
         output %0, %1",
    );
}

#[test]
fn unsqueeze_of_squeeze_attribute_form_cancels() {
    check_fires(
        &["unsqueeze-squeeze-attr"],
        "input z f32[1,4]
         c = Squeeze{0}(z)
         d = Unsqueeze{0}(c)
         w = Relu(d)
         output w",
        "%0 = Relu(z)
         output %0",
    );
}

#[test]
fn conv_times_a_constant_and_a_constant_plus_conv_fold() {
    check_fires(
        &["conv-mul-const", "const-add-conv"],
        "input x f32[1,3,6,6]
         w = const f32[4,3,3,3] rand
         k = const f32[] 0.5
         d = const f32[4,1,1] rand
         c = Conv{1}(x, w)
         a = Mul(c, k)
         y = Add(d, a)
         output y",
        "%0 = Conv(x, const[4, 3, 3, 3], const[4])
         output %0",
    );
}

/// A decomposed LayerNorm over `x f32[2,4,16]`, `n = (x - mean) / sqrt(var + eps)`, followed
/// by `tail` (which may use g and b).
fn layernorm_src(tail: &str) -> String {
    format!(
        "input x f32[2,4,16]
         two = const f32[] 2.0
         eps = const f32[] 0.00001
         g = const f32[16] rand
         b = const f32[16] rand
         mean = ReduceMean{{-1}}(x)
         d = Sub(x, mean)
         sq = Pow(d, two)
         var = ReduceMean{{-1}}(sq)
         ve = Add(var, eps)
         sd = Sqrt(ve)
         n = Div(d, sd)
         {tail}"
    )
}

#[test]
fn layernorm_with_gamma_first() {
    check_fires(
        &["layernorm-gamma-first"],
        &layernorm_src("ng = Mul(g, n)\n y = Add(ng, b)\n output y"),
        "%0 = LayerNormalization(x, const[16], const[16])
         output %0",
    );
}

#[test]
fn layernorm_without_shift() {
    check_fires(
        &["layernorm-no-bias"],
        &layernorm_src("y = Mul(n, g)\n output y"),
        "%0 = LayerNormalization(x, const[16])
         output %0",
    );
}

#[test]
fn layernorm_without_scale() {
    check_fires(
        &["layernorm-shift-only"],
        &layernorm_src("y = Add(n, b)\n output y"),
        "%0 = LayerNormalization(x, const[16], const[16])
         output %0",
    );
}

/// A decomposed RMSNorm's statistics over `x f32[2,4,16]`: `s = sqrt(mean(x^2) + eps)`,
/// followed by `tail`.
fn rmsnorm_src(tail: &str) -> String {
    format!(
        "input x f32[2,4,16]
         two = const f32[] 2.0
         eps = const f32[] 0.000001
         g = const f32[16] rand
         sq = Pow(x, two)
         ms = ReduceMean{{-1}}(sq)
         a = Add(ms, eps)
         s = Sqrt(a)
         {tail}"
    )
}

#[test]
fn rmsnorm_operand_orders() {
    let want = "%0 = RMSNormalization(x, const[16])
                output %0";
    check_fires(
        &["rmsnorm-gamma-last"],
        &rmsnorm_src("r = Reciprocal(s)\n n = Mul(x, r)\n y = Mul(n, g)\n output y"),
        want,
    );
    check_fires(&["rmsnorm-div"], &rmsnorm_src("n = Div(x, s)\n y = Mul(g, n)\n output y"), want);
    check_fires(&["rmsnorm-div-gamma-last"], &rmsnorm_src("n = Div(x, s)\n y = Mul(n, g)\n output y"), want);
}

#[test]
fn packed_attention_without_a_mask() {
    check_fires(
        &["attention-packed-nomask"],
        "input x f32[2,8,32]
         wq = const f32[32,32] rand
         wk = const f32[32,32] rand
         wv = const f32[32,32] rand
         bq = const f32[32] rand
         bk = const f32[32] rand
         bv = const f32[32] rand
         hs = const i64[4] 2,8,2,16
         ms = const i64[3] 2,8,32
         scale = const f32[] 0.25
         q0 = MatMul(x, wq)
         q1 = Add(q0, bq)
         k0 = MatMul(x, wk)
         k1 = Add(k0, bk)
         v0 = MatMul(x, wv)
         v1 = Add(v0, bv)
         q1r = Reshape(q1, hs)
         qh = Transpose{0,2,1,3}(q1r)
         kr = Reshape(k1, hs)
         vr = Reshape(v1, hs)
         kh = Transpose{0,2,1,3}(kr)
         vh = Transpose{0,2,1,3}(vr)
         kt = Transpose{0,1,3,2}(kh)
         s = MatMul(qh, kt)
         sc = Mul(s, scale)
         p = Softmax{-1}(sc)
         c = MatMul(p, vh)
         ct = Transpose{0,2,1,3}(c)
         y = Reshape(ct, ms)
         output y",
        "%0 = MatMulEpilogue[(in0 + in1)](x, const[32, 96], const[96])
         %1 = PackedAttention(%0)
         output %1",
    );
}

// ---- explicit quantization -----------------------------------------------------------------

#[test]
fn dequantized_conv_with_bias_and_relu_is_one_integer_node() {
    check_fires(
        &["qdq-conv", "gemm-epilogue"],
        "input x f32[1,3,6,6]
         xs = const f32[] 0.02
         xz = const i8[] 0
         wq = const i8[4,3,3,3] rand
         ws = const f32[4] 0.01,0.02,0.015,0.03
         b = const f32[4] rand
         xq = QuantizeLinear(x, xs, xz)
         xd = DequantizeLinear(xq, xs, xz)
         wd = DequantizeLinear{0}(wq, ws)
         c = Conv{1}(xd, wd, b)
         y = Relu(c)
         output y",
        "%0 = QuantizeLinear(x, const[], const[])
         %1 = ConvIntegerEpilogue[Relu(((Cast<f32>(in0) * in1) + in2))](%0, const[4, 3, 3, 3], const[], _, const[4, 1, 1], const[4, 1, 1])
         output %1",
    );
}

#[test]
fn a_quantized_activation_is_written_by_its_producer_epilogue() {
    // conv -> relu -> quantize -> conv: the first convolution's epilogue quantizes.
    check_fires(
        &["qdq-conv", "gemm-epilogue"],
        "input x f32[1,3,6,6]
         xs = const f32[] 0.02
         xz = const i8[] 0
         wq = const i8[4,3,3,3] rand
         ws = const f32[4] 0.01,0.02,0.015,0.03
         b = const f32[4] rand
         xq = QuantizeLinear(x, xs, xz)
         xd = DequantizeLinear(xq, xs, xz)
         wd = DequantizeLinear{0}(wq, ws)
         c = Conv{1}(xd, wd, b)
         y = Relu(c)
         ys = const f32[] 0.05
         yq = QuantizeLinear(y, ys, xz)
         yd = DequantizeLinear(yq, ys, xz)
         vq = const i8[2,4,1,1] rand
         vs = const f32[] 0.01
         vd = DequantizeLinear(vq, vs)
         z = Conv(yd, vd)
         output z",
        "%0 = QuantizeLinear(x, const[], const[])
         %1 = ConvIntegerEpilogue[Cast<i8>(Clip<-128,127>(Round((Relu(((Cast<f32>(in0) * in1) + in2)) / 0.05))))](%0, const[4, 3, 3, 3], const[], _, const[4, 1, 1], const[4, 1, 1])
         %2 = ConvIntegerEpilogue[(Cast<f32>(in0) * 0.0005)](%1, const[2, 4, 1, 1], const[], _)
         output %2",
    );
}

#[test]
fn a_max_pool_of_a_quantized_activation_pools_the_integers() {
    // conv -> relu -> maxpool -> quantize -> conv (ResNet's stem): the quantize moves in front
    // of the pool and into the first convolution's epilogue; the pool reads and writes i8.
    check_fires(
        &["qdq-conv", "qdq-maxpool", "gemm-epilogue"],
        "input x f32[1,3,8,8]
         xs = const f32[] 0.02
         xz = const i8[] 0
         wq = const i8[4,3,3,3] rand
         ws = const f32[4] 0.01,0.02,0.015,0.03
         b = const f32[4] rand
         xq = QuantizeLinear(x, xs, xz)
         xd = DequantizeLinear(xq, xs, xz)
         wd = DequantizeLinear{0}(wq, ws)
         c = Conv{1}(xd, wd, b)
         y = Relu(c)
         p = MaxPool{3}(y)
         ys = const f32[] 0.05
         pq = QuantizeLinear(p, ys, xz)
         pd = DequantizeLinear(pq, ys, xz)
         vq = const i8[2,4,1,1] rand
         vs = const f32[] 0.01
         vd = DequantizeLinear(vq, vs)
         z = Conv(pd, vd)
         output z",
        "%0 = QuantizeLinear(x, const[], const[])
         %1 = ConvIntegerEpilogue[Cast<i8>(Clip<-128,127>(Round((Relu(((Cast<f32>(in0) * in1) + in2)) / 0.05))))](%0, const[4, 3, 3, 3], const[], _, const[4, 1, 1], const[4, 1, 1])
         %2 = MaxPool(%1)
         %3 = ConvIntegerEpilogue[(Cast<f32>(in0) * 0.0005)](%2, const[2, 4, 1, 1], const[], _)
         output %3",
    );
}

#[test]
fn a_max_pool_quantized_without_a_zero_point_pools_the_integers() {
    // relu -> maxpool -> quantize to u8 (no zero point): the pool runs on the u8 values.
    check_fires(
        &["qdq-maxpool-nozp"],
        "input x f32[1,2,6,6]
         y = Relu(x)
         p = MaxPool{3}(y)
         ys = const f32[] 0.05
         pq = QuantizeLinear(p, ys)
         output pq",
        "%0 = FusedElementwise[Cast<u8>(Clip<0,255>(Round((Relu(in0) / 0.05))))](x)
         %1 = MaxPool(%0)
         output %1",
    );
}

#[test]
fn dequantized_conv_without_bias_and_matmul_run_on_integers() {
    check_fires(
        &["qdq-conv-nobias"],
        "input x f32[1,2,4,4]
         xs = const f32[] 0.05
         wq = const i8[2,2,1,1] 10,-20,30,-40
         ws = const f32[] 0.01
         xq = QuantizeLinear(x, xs)
         xd = DequantizeLinear(xq, xs)
         wd = DequantizeLinear(wq, ws)
         y = Conv(xd, wd)
         output y",
        "%0 = QuantizeLinear(x, const[])
         %1 = ConvIntegerEpilogue[(Cast<f32>(in0) * 0.0005)](%0, const[2, 2, 1, 1], _, _)
         output %1",
    );
    check_fires(
        &["qdq-matmul"],
        "input a f32[3,4]
         az = const u8[] 128
         as = const f32[] 0.01
         bq = const i8[4,2] 1,-2,3,-4,5,-6,7,-8
         bs = const f32[2] 0.1,0.2
         aq = QuantizeLinear(a, as, az)
         ad = DequantizeLinear(aq, as, az)
         bd = DequantizeLinear(bq, bs)
         y = MatMul(ad, bd)
         output y",
        "%0 = QuantizeLinear(a, const[], const[])
         %1 = MatMulIntegerEpilogue[(Cast<f32>(in0) * in1)](%0, const[4, 2], const[], _, const[2])
         output %1",
    );
}

#[test]
fn dequantized_gemm_runs_on_integers() {
    // transB: the INT8 weight is transposed once at build time; the bias rides in the epilogue.
    check_fires(
        &["qdq-gemm"],
        "input a f32[3,8]
         as = const f32[] 0.02
         wq = const i8[5,8] rand
         ws = const f32[5] 0.01,0.02,0.03,0.04,0.05
         c = const f32[5] rand
         aq = QuantizeLinear(a, as)
         ad = DequantizeLinear(aq, as)
         wd = DequantizeLinear{0}(wq, ws)
         y = Gemm{transB}(ad, wd, c)
         output y",
        "%0 = QuantizeLinear(a, const[])
         %1 = MatMulIntegerEpilogue[((Cast<f32>(in0) * in1) + in2)](%0, const[8, 5], _, _, const[5], const[5])
         output %1",
    );
    check_fires(
        &["qdq-gemm-nobias"],
        "input a f32[3,8]
         as = const f32[] 0.02
         wq = const i8[8,5] rand
         ws = const f32[] 0.01
         aq = QuantizeLinear(a, as)
         ad = DequantizeLinear(aq, as)
         wd = DequantizeLinear(wq, ws)
         y = Gemm(ad, wd)
         output y",
        "%0 = QuantizeLinear(a, const[])
         %1 = MatMulIntegerEpilogue[(Cast<f32>(in0) * 0.0002)](%0, const[8, 5], _, _)
         output %1",
    );
}

/// Every registered rule is named by some case of this file (as the first argument of
/// `check_fires`, which asserts it fired), so a new rule cannot land without its test.
#[test]
fn every_rule_has_a_case() {
    let src = include_str!("rules.rs");
    let mut covered = std::collections::BTreeSet::new();
    for chunk in src.split("check_fires(").skip(1) {
        let list = chunk.split(']').next().unwrap_or("");
        for name in list.split('"').skip(1).step_by(2) {
            covered.insert(name.to_string());
        }
    }
    let missing: Vec<String> =
        kiln_fuse::rules::all().iter().map(|r| r.name.to_string()).filter(|n| !covered.contains(n)).collect();
    assert!(missing.is_empty(), "rules without a case in tests/rules.rs: {missing:?}");
}

#[test]
fn a_residual_sum_reads_its_quantized_input_as_integers() {
    // Relu(conv(x) + x) with x quantized for the convolution (a ResNet block that reads its
    // input in INT8 for the sum too): the dequantize folds into the epilogue, which reads the
    // i8 input directly.
    check_fires(
        &["qdq-conv-nobias", "qdq-dequantize", "gemm-epilogue"],
        "input x f32[1,4,6,6]
         xs = const f32[] 0.02
         xz = const i8[] 0
         wq = const i8[4,4,1,1] rand
         ws = const f32[4] 0.01,0.02,0.015,0.03
         xq = QuantizeLinear(x, xs, xz)
         xd = DequantizeLinear(xq, xs, xz)
         wd = DequantizeLinear{0}(wq, ws)
         c = Conv(xd, wd)
         s = Add(c, xd)
         y = Relu(s)
         output y",
        "%0 = QuantizeLinear(x, const[], const[])
         %1 = ConvIntegerEpilogue[Relu(((Cast<f32>(in0) * in1) + (Cast<f32>(in2) * 0.02)))](%0, const[4, 4, 1, 1], const[], _, const[4, 1, 1], %0)
         output %1",
    );
}

#[test]
fn a_dequantize_without_a_zero_point_folds_into_its_reader() {
    check_fires(
        &["qdq-dequantize-nozp"],
        "input x f32[2,8]
         xs = const f32[] 0.05
         xq = QuantizeLinear(x, xs)
         xd = DequantizeLinear(xq, xs)
         y = Add(xd, x)
         output y",
        "%0 = QuantizeLinear(x, const[])
         %1 = FusedElementwise[((Cast<f32>(in0) * 0.05) + in1)](%0, x)
         output %1",
    );
}

#[test]
fn a_max_pool_over_a_float_convolution_runs_before_its_bias_and_relu() {
    // conv -> relu -> maxpool -> quantize (ResNet's stem kept float in an INT8 build): the
    // pool reads the plain convolution, and the bias, ReLU and quantize run over the pooled
    // tensor in one kernel; the quantize does not move in front of the pool (`qdq-maxpool`),
    // where it would cost a pass over the convolution's output.
    let stem = "input x f32[1,3,8,8]
         w = const f32[4,3,3,3] rand
         b = const f32[4] rand
         c = Conv{1}(x, w, b)
         y = Relu(c)
         p = MaxPool{3}(y)";
    check_fires(
        &["pool-before-bias"],
        &format!(
            "{stem}
             ys = const f32[] 0.05
             yz = const i8[] 0
             pq = QuantizeLinear(p, ys, yz)
             output pq"
        ),
        "%0 = Conv(x, const[4, 3, 3, 3])
         %1 = MaxPool(%0)
         %2 = FusedElementwise[Cast<i8>(Clip<-128,127>(Round((Relu((in0 + in1)) / 0.05))))](%1, const[4, 1, 1])
         output %2",
    );
    // Without the quantize, the convolution's epilogue takes the bias and ReLU: two launches
    // rather than three.
    check(
        &format!("{stem}\n output p"),
        "%0 = ConvEpilogue[Relu(in0)](x, const[4, 3, 3, 3], const[4])
         %1 = MaxPool(%0)
         output %1",
    );
}
