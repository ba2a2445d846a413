//! The `.kiln` engine file on the CPU: round trips, byte-identical builds, and refusal of
//! damaged, truncated, foreign and hand-crafted files. Runs on a tiny hand-made engine always,
//! and on the BERT layer fixture's plan, with CUBINs compiled for sm_90 where NVRTC is present
//! and dummy ones otherwise.

#[path = "support/tiny.rs"]
mod tiny;

use kiln_cuda::nvrtc::Nvrtc;
use kiln_cuda::plan::Plan;
use kiln_runtime::engine::{build_engine, encode_unchecked, EngineError, EngineFile, FIXED_BYTES};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

fn bert_plan() -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models/bert_layer.onnx");
    let mut g = kiln::load(&path).unwrap().graph;
    let shapes: HashMap<String, Vec<usize>> =
        [("x".to_string(), vec![2, 8, 32]), ("mask".to_string(), vec![2, 1, 1, 8])].into_iter().collect();
    kiln::specialize(&mut g, &shapes).unwrap();
    kiln::optimize(&mut g).unwrap();
    kiln_cuda::plan::plan(&g).unwrap_or_else(|e| panic!("{e}"))
}

fn build_bert() -> EngineFile {
    let options = vec![("workspace_bytes".to_string(), "4194304".to_string())];
    match Nvrtc::locate() {
        Ok(nvrtc) => build_engine(bert_plan(), "sm_90", &nvrtc, options).unwrap_or_else(|e| panic!("{e}")),
        Err(e) => {
            println!("NVRTC not found ({e}): the BERT engine gets dummy CUBINs");
            tiny::with_dummy_cubins(bert_plan(), "sm_90", 4 << 20)
        }
    }
}

/// The engines every test runs on, built once.
fn engines() -> &'static [(&'static str, EngineFile)] {
    static ENGINES: OnceLock<Vec<(&'static str, EngineFile)>> = OnceLock::new();
    ENGINES.get_or_init(|| vec![("tiny", tiny::tiny_engine()), ("bert_layer", build_bert())])
}

/// The one place the reader is called.
fn read(bytes: &[u8]) -> Result<EngineFile, EngineError> {
    EngineFile::from_bytes(bytes)
}

#[test]
fn engines_round_trip() {
    for (name, e) in engines() {
        let bytes = e.to_bytes();
        println!(
            "{name}: {} bytes, {} buffers, {} steps, {} CUBINs ({} bytes), arena {} of naive {}",
            bytes.len(),
            e.plan().buffers.len(),
            e.plan().steps.len(),
            e.cubins().len(),
            e.cubins().iter().map(|c| c.image.len()).sum::<usize>(),
            e.memory().arena_bytes,
            e.memory().naive_bytes
        );
        let back = read(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(back.plan(), e.plan(), "{name}");
        assert_eq!(back.memory(), e.memory(), "{name}");
        assert_eq!(back.header(), e.header(), "{name}");
        assert_eq!(back.cubins(), e.cubins(), "{name}");
        assert_eq!(back.to_bytes(), bytes, "{name}: re-encoding changes the file");
    }
}

#[test]
fn the_same_build_gives_the_same_bytes() {
    assert_eq!(tiny::tiny_engine().to_bytes(), tiny::tiny_engine().to_bytes());
    assert_eq!(build_bert().to_bytes(), engines()[1].1.to_bytes());
}

#[test]
fn weights_are_256_byte_aligned_in_the_file() {
    for (name, e) in engines() {
        let bytes = e.to_bytes();
        let section = |i: usize| u64::from_le_bytes(bytes[12 + 8 * i..20 + 8 * i].try_into().unwrap()) as usize;
        let weights_at = (FIXED_BYTES + section(0) + section(1)).next_multiple_of(256);
        assert_eq!(weights_at % 256, 0);
        // Each constant's bytes appear at an aligned offset of the weights section.
        for b in &e.plan().buffers {
            if let kiln_cuda::plan::BufferKind::Const(t) = &b.kind {
                let want = kiln_cuda::host::tensor_bytes(t).unwrap();
                let weights = &bytes[weights_at..weights_at + section(2)];
                let found = (0..weights.len()).step_by(256).any(|o| weights[o..].starts_with(&want));
                assert!(found, "{name}: constant {} is not at an aligned offset", b.name);
            }
        }
    }
}

/// A fixed-seed xorshift, so the sampled bytes are the same on every run.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn every_flipped_byte_is_refused() {
    for (name, e) in engines() {
        let bytes = e.to_bytes();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        // Every byte of the fixed part and the checksum, then a sample of the rest.
        let mut at: Vec<usize> = (0..FIXED_BYTES).chain(bytes.len() - 32..bytes.len()).collect();
        while at.len() < 1000 {
            at.push((xorshift(&mut state) % bytes.len() as u64) as usize);
        }
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        for &i in &at {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << (xorshift(&mut state) % 8);
            let err = match read(&bad) {
                Ok(_) => panic!("{name}: flipping byte {i} of {} is accepted", bytes.len()),
                Err(err) => err,
            };
            let kind = match err {
                EngineError::NotEngine => "not an engine",
                EngineError::Version { .. } => "version",
                EngineError::Truncated { .. } => "truncated",
                EngineError::Checksum { .. } => "checksum",
                EngineError::Corrupt(_) => "corrupt",
                other => panic!("{name}: byte {i}: unexpected {other}"),
            };
            *kinds.entry(kind).or_default() += 1;
        }
        println!("{name}: {} flips refused: {kinds:?}", at.len());
        assert!(kinds["checksum"] > 900, "{kinds:?}");
    }
}

#[test]
fn truncated_files_are_refused() {
    for (name, e) in engines() {
        let bytes = e.to_bytes();
        let mut cuts: Vec<usize> = vec![0, 1, 7, 8, 11, 12, FIXED_BYTES - 1, FIXED_BYTES, bytes.len() - 1];
        cuts.extend((1..=91).map(|i| i * bytes.len() / 92));
        assert_eq!(cuts.len(), 100);
        for cut in cuts {
            match read(&bytes[..cut]) {
                Err(EngineError::Truncated { expected, found }) => {
                    assert_eq!(found, cut as u64);
                    assert!(expected > found, "{name}: cut at {cut}: expected {expected}");
                    let msg = EngineError::Truncated { expected, found }.to_string();
                    assert!(msg.contains(&format!("expected {expected} bytes, found {cut}")), "{msg}");
                }
                Err(other) => panic!("{name}: cut at {cut}: {other}"),
                Ok(_) => panic!("{name}: a file cut at {cut} of {} bytes is accepted", bytes.len()),
            }
        }
        // And bytes past the checksum are refused too.
        let mut long = bytes.clone();
        long.push(0);
        assert!(read(&long).unwrap_err().to_string().contains("1 bytes after the checksum"));
    }
}

#[test]
fn other_files_versions_and_architectures_are_refused_with_clear_messages() {
    let e = tiny::tiny_engine();
    let bytes = e.to_bytes();
    assert!(matches!(read(b"\x08\x01\x12\x04onnx model"), Err(EngineError::NotEngine)));
    assert_eq!(read(b"").unwrap_err().to_string(), "truncated engine file: expected 44 bytes, found 0");

    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&7u32.to_le_bytes());
    let msg = read(&newer).unwrap_err().to_string();
    assert_eq!(msg, "engine format version 7, this Kiln reads version 1: rebuild the engine with this Kiln");

    e.check_arch("sm_90").unwrap();
    let sm80 = tiny::with_dummy_cubins(tiny::tiny_plan(), "sm_80", 1024);
    let back = read(&sm80.to_bytes()).unwrap();
    let msg = back.check_arch("sm_90").unwrap_err().to_string();
    assert_eq!(msg, "engine built for sm_80, this GPU is sm_90: rebuild the engine on this GPU");

    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let msg = read(&damaged).unwrap_err().to_string();
    assert!(msg.starts_with("engine file checksum mismatch: stored ") && msg.contains(", computed "), "{msg}");
}

/// Files with a valid checksum but a wrong plan, written with `encode_unchecked`: each must be
/// refused as corrupt, naming what is wrong.
#[test]
fn hand_crafted_plans_with_valid_checksums_are_refused() {
    let e = tiny::tiny_engine();
    let check = |what: &str, edit: &dyn Fn(&mut Plan, &mut kiln_runtime::memory::MemoryPlan), want: &str| {
        let (mut plan, mut memory) = (e.plan().clone(), e.memory().clone());
        edit(&mut plan, &mut memory);
        let bytes = encode_unchecked(e.header(), &plan, &memory, e.cubins());
        match read(&bytes) {
            Err(EngineError::Corrupt(msg)) => assert!(msg.contains(want), "{what}: {msg}"),
            Err(other) => panic!("{what}: refused, but not as corrupt: {other}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    };
    use kiln_cuda::plan::{Arg, BufferKind, GemmEpilogue, ModuleRef, StepKind};
    check("output id", &|p, _| p.outputs[0] = 10_000, "output 0: buffer id 10000 is out of range (9 buffers)");
    check(
        "kernel argument",
        &|p, _| {
            if let StepKind::Kernel(k) = &mut p.steps[3].kind {
                k.args[1] = Arg::Buffer(99);
            }
        },
        "step 3 (gather): buffer id 99 is out of range",
    );
    check(
        "GEMM epilogue",
        &|p, _| {
            if let StepKind::Gemm(g) = &mut p.steps[0].kind {
                g.epilogue = GemmEpilogue::Bias(usize::MAX);
            }
        },
        "step 0 (fc): buffer id",
    );
    check(
        "GEMM too large for its buffers",
        &|p, _| {
            if let StepKind::Gemm(g) = &mut p.steps[0].kind {
                g.m = 3;
            }
        },
        "A (buffer 0) of 16 elements is too small",
    );
    check(
        "generated kernel",
        &|p, _| {
            if let StepKind::Kernel(k) = &mut p.steps[2].kind {
                k.module = ModuleRef::Generated(5);
            }
        },
        "generated kernel 5 is out of range",
    );
    check("view owner", &|p, _| p.buffers[4].kind = BufferKind::View(40), "buffer 4 (a view): buffer id 40");
    check("last use", &|p, _| p.buffers[3].last_use = Some(4), "buffer 3: last use at step 4");
    check(
        "elementwise strides",
        &|p, _| {
            if let StepKind::Kernel(k) = &mut p.steps[2].kind {
                k.args[0] = Arg::Elementwise { inputs: vec![(6, vec![8, 4, 2, 2])], output: 7 };
            }
        },
        "buffer 6 of 8 elements read at element 8",
    );
    check("overlapping memory", &|_, m| m.offsets[6] = m.offsets[7], "overlap");
    check("memory past the arena", &|_, m| m.arena_bytes = 256, "run past the arena");
    check("missing offsets", &|_, m| m.offsets.truncate(3), "9 buffers, but 3 offsets");
    check("huge shape", &|p, _| p.buffers[3].shape = vec![1 << 40, 1 << 40], "buffer 3: shape");
    check("error flag", &|p, _| p.error_flags[0].0 = 7, "error flag 0: buffer 7 is not an i32 flag");
}

#[test]
fn cubins_must_cover_every_module_and_match_the_arch() {
    let e = tiny::tiny_engine();
    let mut cubins = e.cubins().to_vec();
    cubins.pop();
    let bytes = encode_unchecked(e.header(), e.plan(), e.memory(), &cubins);
    assert!(read(&bytes).unwrap_err().to_string().contains("no CUBIN for module 'fused_tiny_f32'"));
    let mut cubins = e.cubins().to_vec();
    cubins[0].arch = "sm_80".into();
    let bytes = encode_unchecked(e.header(), e.plan(), e.memory(), &cubins);
    assert!(read(&bytes).unwrap_err().to_string().contains("is for sm_80, the engine for sm_90"));
}

/// The committed seeds of the `engine_file` fuzz target are current: the valid one reads.
#[test]
fn fuzz_seed_is_a_valid_engine() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/engine_file/tiny.kiln");
    let bytes = std::fs::read(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
    read(&bytes).unwrap_or_else(|e| panic!("{}: {e} (rewrite it with the engine_seeds example)", seed.display()));
}

/// An i8 GEMM into i32 (cuBLASLt's integer tensor cores): its output type survives the round
/// trip, and operands of the wrong type or a pairing cuBLASLt has no kernel for are refused.
#[test]
fn int8_gemms_round_trip_and_are_checked() {
    use kiln_cuda::plan::{Buffer, BufferKind, GemmEpilogue, GemmStep, Step, StepKind};
    use kiln_ir::{DType, Tensor};
    let buffer = |name: &str, dtype: DType, shape: &[usize], kind: BufferKind| Buffer {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        kind,
        output: false,
        last_use: Some(0),
    };
    let w = Tensor::from_vec(vec![12, 8], (0..96).map(|i| (i % 7) as i8 - 3).collect::<Vec<i8>>()).unwrap();
    let mut d = buffer("y", DType::I32, &[4, 12], BufferKind::Temp);
    d.output = true;
    let gemm = GemmStep {
        a: 0,
        b: 1,
        c: None,
        d: 2,
        m: 4,
        n: 12,
        k: 8,
        batch: 1,
        batch_strides: [0, 0, 0],
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        beta: 0.0,
        dtype: DType::I8,
        out_dtype: DType::I32,
        epilogue: GemmEpilogue::None,
    };
    let plan = Plan {
        buffers: vec![
            buffer("x", DType::I8, &[4, 8], BufferKind::Input(0)),
            buffer("w", DType::I8, &[12, 8], BufferKind::Const(w)),
            d,
        ],
        steps: vec![Step { node: "fc".into(), kind: StepKind::Gemm(gemm) }],
        outputs: vec![2],
        ..Default::default()
    };
    let e = tiny::with_dummy_cubins(plan.clone(), "sm_90", 1024);
    let back = read(&e.to_bytes()).unwrap();
    assert_eq!(back.plan(), &plan);
    let check = |what: &str, edit: &dyn Fn(&mut Plan), want: &str| {
        let mut p = plan.clone();
        edit(&mut p);
        let bytes = encode_unchecked(e.header(), &p, e.memory(), e.cubins());
        match read(&bytes) {
            Err(EngineError::Corrupt(msg)) => assert!(msg.contains(want), "{what}: {msg}"),
            Err(other) => panic!("{what}: refused, but not as corrupt: {other}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    };
    fn gemm_of(p: &mut Plan) -> &mut GemmStep {
        match &mut p.steps[0].kind {
            StepKind::Gemm(g) => g,
            _ => panic!("step 0 is the GEMM"),
        }
    }
    check("f32 into i32", &|p| gemm_of(p).dtype = DType::F32, "a GEMM of f32 into i32");
    check("i8 into i8", &|p| gemm_of(p).out_dtype = DType::I8, "a GEMM of i8 into i8");
    check("i8 into an f32 buffer", &|p| p.buffers[2].dtype = DType::F32, "buffer 2 is f32, the GEMM takes i32 there");
}
