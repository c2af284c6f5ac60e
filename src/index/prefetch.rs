//! A software prefetch hint for the graph walk.
//!
//! Expanding a node compares the query with up to `2M` neighbours whose
//! codes lie at scattered addresses; loaded one by one, each comparison
//! waits for its cache misses. The walk first asks for all of a node's
//! unvisited neighbours' codes, then compares them, so the misses overlap
//! (hnswlib and faiss prefetch the same way). Stable Rust has no safe
//! prefetch, hence the one `unsafe` here.

/// Cache lines asked for per slice: a whole 1280-d int8 code. Measured at
/// 100K x 1280-d (`lookbook-bench bench-index`, ef 24, one thread): asking
/// for its first 4 or 8 lines gave about 2/3 and 3/4 of the QPS of asking for all
/// 20; for 5,120-byte f32 vectors, asking for all 80 lines was slower than
/// asking for the first 20, after which the hardware prefetcher follows.
const LINES: usize = 20;
const LINE: usize = 64;

/// Asks the CPU to start loading the first cache lines of `data`.
#[inline]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(data).min(LINES * LINE);
        let start: *const i8 = data.as_ptr().cast();
        for offset in (0..bytes).step_by(LINE) {
            #[expect(
                unsafe_code,
                reason = "a prefetch is a hint that never faults and changes no \
                          state Rust can see; see the SAFETY comment"
            )]
            // SAFETY: `_mm_prefetch` only needs SSE, which every x86_64 CPU
            // has; it dereferences nothing (an invalid address is ignored),
            // and this one is inside a live slice anyway.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}
