//! Fuzz target `config`. Invariant: building a snapshot from any providers.yaml and vault text
//! never panics and always terminates (run with `-timeout=10`); a refusal always names a file and a
//! reason.
//!
//! The checks live in `tests/props/invariants.rs`, shared with the proptests CI runs; the
//! input format is described there.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/props/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::check_config(data));
