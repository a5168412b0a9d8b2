#![no_main]

#[path = "../../common/proto/tests/untrusted/checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::inference_binary(data));
