//! Fuzz target: arbitrary bytes through the `.npy` reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::read_npy(data));
