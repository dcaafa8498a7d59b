//! Fuzz target `template`. Invariant: compiling and rendering a `${...}` template never panics;
//! text without `$` renders to itself; a template renders exactly when all its placeholders
//! resolve; a base URL template never renders a credential.
//!
//! The checks live in `tests/props/invariants.rs`, shared with the proptests CI runs; the
//! input format is described there.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/props/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::check_template(data));
