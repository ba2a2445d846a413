//! Fuzz target: arbitrary bytes through the `.kiln` engine file reader.
#![no_main]

#[path = "../src/engine_file.rs"]
mod engine_file;

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine_file::engine_file(data));
