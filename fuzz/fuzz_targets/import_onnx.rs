//! Fuzz target: arbitrary bytes through the ONNX importer to a verified graph.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::import_onnx(data));
