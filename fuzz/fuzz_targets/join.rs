//! Fuzz target `join`. Invariant: routing a request target and joining its endpoint onto a base URL
//! never panics and never escapes the base path: the joined path, after removing dot segments
//! (percent-decoded, `/` and `\` as separators), starts with the base path, or the join is refused
//! with `invalid_endpoint`.
//!
//! The checks live in `tests/props/invariants.rs`, shared with the proptests CI runs; the
//! input format is described there.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/props/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::check_join(data));
