//! Handing freed memory back to the operating system after a snapshot is built.
//!
//! Building a snapshot from the vault allocates far more than the snapshot keeps (the file's
//! text, the parser's state, each record before it is compiled). mimalloc keeps the pages
//! that this frees and returns them only after its purge delay, and only when the allocator
//! is called again and finds them due; an idle sidecar that just loaded 100k connections held
//! its whole load peak as RSS (BENCHMARKS.md, issue 12). `release_freed` asks mimalloc to
//! collect now: every heap's free pages go back to the OS at once. It is called where a large
//! amount was just freed (after the first load and after a reload), never per request.
//!
//! When sidekey's library runs under another global allocator (tests, benches), the call only
//! walks mimalloc's own heaps, which are then empty.

/// Returns the pages every mimalloc heap holds free to the operating system.
#[allow(unsafe_code)] // the one use in the crate: mimalloc has no safe binding for `mi_collect`
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers and is documented as callable from any thread at
    // any time; it only walks mimalloc's own heaps and arenas.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
