//! Fuzz target `headers`. Invariant: no hop-by-hop, infrastructure or control header ever reaches
//! the upstream, nor one the caller's Connection header names; the injected credential wins over
//! anything the caller sends; responses lose their hop-by-hop headers and a forged `Sidekey-Error`,
//! and nothing else.
//!
//! The checks live in `tests/props/invariants.rs`, shared with the proptests CI runs; the
//! input format is described there.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/props/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::check_headers(data));
