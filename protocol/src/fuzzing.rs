//! The body of the fuzz target `protocol/fuzz/fuzz_targets/decoders.rs`: every decoder of this crate
//! on the same untrusted bytes. It must never panic, loop forever or read past its input.
//!
//! Two drivers call it: `cargo +nightly fuzz run decoders` (libFuzzer, coverage-guided) from
//! `protocol/fuzz`, and the unit test below, which feeds it deterministic pseudo-random inputs on
//! stable Rust in every `cargo test`.

use bytes::BytesMut;

use crate::auth::AuthRequest;
use crate::backend::{split_frame, ErrorFields, TxStatus};
use crate::classify::Classifier;
use crate::frontend::{
    cleartext_password, query_text, strip_channel_binding, Bind, FrontendHeader, Parse, Target,
};
use crate::startup::{CancelKey, StartupPhase};

/// Runs every decoder on `data`: the startup phase, then client messages and server messages
/// framed from what is left, each body through the decoders of its type, and SQL text through the
/// classifier.
pub fn decoders(data: &[u8]) {
    // The startup phase, as a client's first bytes.
    let mut buf = BytesMut::from(data);
    let mut phase = StartupPhase::new();
    while let Ok(Some(_)) = phase.decode(&mut buf) {}

    // Client messages after the startup phase, with a small size limit.
    let mut at = 0;
    while let Ok(Some(h)) = FrontendHeader::peek(&data[at..], 1 << 16) {
        let Some(body) = h.body(&data[at..]) else {
            break;
        };
        match h.tag {
            b'Q' => {
                if let Ok(q) = query_text(body) {
                    let _ = Classifier::default().classify(q);
                }
            }
            b'P' => {
                if let Ok(p) = Parse::decode(body) {
                    let _ = Classifier::default().classify(p.query);
                }
            }
            b'B' => {
                let _ = Bind::decode(body);
            }
            b'D' | b'C' => {
                let _ = Target::decode(body);
            }
            b'p' => {
                let _ = cleartext_password(body);
            }
            _ => {}
        }
        at += h.frame_len;
    }

    // Server messages.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = split_frame(&mut buf) {
        let body = f.body();
        let _ = TxStatus::from_ready_for_query(body);
        let _ = CancelKey::from_backend_key_data(body);
        let _ = ErrorFields::parse(body);
        let _ = AuthRequest::decode(body);
        let _ = strip_channel_binding(body);
    }

    // Text as SQL.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Classifier::default().classify(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stable-Rust stand-in for the fuzzer: 20,000 pseudo-random inputs biased toward plausible
    /// framing (valid lengths and tags), deterministic so a failure replays.
    #[test]
    fn decoders_survive_pseudo_random_inputs() {
        let mut state = 0x5eed_f00d_dead_beefu64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let tags = b"QPBDCpSERKZN";
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 5 && next() % 2 == 0 {
                data[0] = tags[(next() % tags.len() as u64) as usize];
                let body = (len - 1) as u32;
                data[1..5].copy_from_slice(&body.to_be_bytes());
            }
            if len >= 8 && next() % 4 == 0 {
                data[..4].copy_from_slice(&(len as u32).to_be_bytes());
                data[4..8].copy_from_slice(&0x0003_0000u32.to_be_bytes());
            }
            decoders(&data);
        }
        decoders(b"SELECT * FROM t FOR UPDATE; BEGIN READ ONLY");
    }
}
