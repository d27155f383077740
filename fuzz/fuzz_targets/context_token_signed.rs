#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spkeeper::fuzzing::context_token_signed(data));
