#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spkeeper::fuzzing::hosts(data));
