//! `cargo +nightly fuzz run decoders` (from `protocol/fuzz`): every decoder of praetor-protocol on
//! libFuzzer's inputs. The body is `praetor_protocol::fuzzing::decoders`, which a unit test also runs
//! on stable Rust.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    praetor_protocol::fuzzing::decoders(data);
});
