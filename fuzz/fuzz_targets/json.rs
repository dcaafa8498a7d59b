//! Fuzz target `json`. Invariant: the JSON sidekey parses (OAuth token endpoint responses) never
//! panics, and a failure's detail carries only the status and a code-shaped `error`; every
//! management API request target is answered with JSON that never contains a credential.
//!
//! The checks live in `tests/props/invariants.rs`, shared with the proptests CI runs; the
//! input format is described there.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/props/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::check_json(data));
