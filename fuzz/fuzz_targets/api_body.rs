//! Fuzz target `api_body`. Invariant: a management API write body, for any write route, is
//! parsed or refused with 400 `invalid_body` and a reason, never panics, and never repeats a
//! string value of the body (a value may be a credential) in the error.
//!
//! The checks live in `tests/props/invariants.rs`, shared with the proptests CI runs; the
//! input format (`METHOD PATH\nBODY`) is described there.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/props/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::check_api_body(data));
