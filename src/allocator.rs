//! The process's memory allocator: how many arenas glibc's malloc may keep,
//! and how much heap is in use. SPEC §6 counts memory per active call in
//! the RSS an operator sees, and RSS also holds what the allocator freed
//! but kept.
//!
//! The library does not choose the allocator: the `powerdial` binary makes
//! jemalloc its global allocator (src/main.rs) and hands this module a
//! [`HeapProbe`] that reads jemalloc's own statistics. Without one (tests,
//! the load driver, another embedding) the figures come from glibc's
//! `mallinfo2(3)`.

use std::sync::OnceLock;

/// Reads the global allocator's heap in use, in bytes; `None` when it
/// cannot tell. Installed once by the binary that picks the allocator.
pub type HeapProbe = fn() -> Option<u64>;

static HEAP_PROBE: OnceLock<HeapProbe> = OnceLock::new();

/// Makes [`heap_in_use_bytes`] read `probe` instead of glibc's figures:
/// for a binary whose `#[global_allocator]` is not glibc's malloc, whose
/// `mallinfo2` would then count only what C libraries (SQLite, OpenSSL)
/// allocate. The first probe set stays; returns whether this one was taken.
pub fn set_heap_probe(probe: HeapProbe) -> bool {
    HEAP_PROBE.set(probe).is_ok()
}

/// Caps glibc's malloc arenas at the number of CPUs (`mallopt(3)`
/// `M_ARENA_MAX`), unless the operator set `MALLOC_ARENA_MAX` (glibc reads
/// it at start-up; it wins). Call it before the runtime's threads start.
///
/// Under the `powerdial` binary's jemalloc, glibc's malloc serves only the
/// C libraries (SQLite, OpenSSL); the cap still keeps their few blocks
/// from opening an arena per thread, and costs nothing. jemalloc's own
/// arenas are set by its `malloc_conf` (src/main.rs).
///
/// Why: glibc gives a thread that meets a locked arena a new one, up to
/// 8 per CPU; every worker, relay loop and database thread then keeps its
/// own free memory and its own high-water mark, and memory freed after a
/// burst of call set-ups stays resident in each of them. Measured with
/// `powerdial-load --only memory` (BENCHMARKS.md, memory per active call):
/// `MALLOC_ARENA_MAX=2` on the 2-CPU machine took 28–31 KB of RSS per
/// call to 19–23 KB on the same build. Small allocations mostly come from
/// each thread's own cache (tcache) without the arena's lock, so fewer
/// arenas cost little contention.
///
/// Returns the cap it set, `None` when it set none (the operator's
/// variable, or not glibc).
pub fn limit_arenas() -> Option<usize> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return None;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    set_arena_max(cpus)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(n: usize) -> Option<usize> {
    let n = i32::try_from(n.max(1)).unwrap_or(i32::MAX);
    // SAFETY: mallopt takes two integers and only changes malloc's
    // parameters; it returns 1 on success.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) } == 1;
    ok.then_some(n as usize)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_n: usize) -> Option<usize> {
    None
}

/// Heap bytes in use, read at a scrape, not on a hot path.
///
/// With a [`HeapProbe`] set (the `powerdial` binary's jemalloc), what the
/// probe reads. Otherwise glibc's chunks in use in every arena plus its
/// mmapped chunks (`mallinfo2(3)`: `uordblks + hblkhd`), headers and
/// alignment included; it walks every arena's free lists under their
/// locks. `None` when neither can tell.
pub fn heap_in_use_bytes() -> Option<u64> {
    if let Some(probe) = HEAP_PROBE.get() {
        return probe();
    }
    glibc_in_use_bytes()
}

fn glibc_in_use_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct
        // by value (glibc ≥ 2.33).
        let info = unsafe { libc::mallinfo2() };
        Some(info.uordblks as u64 + info.hblkhd as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heap figure follows the allocator: a live 64 MiB block shows in
    /// it, and is gone from it once freed (16 MiB of slack for what the
    /// other tests of this process allocate meanwhile).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_in_use_counts_a_live_block() {
        const BLOCK: u64 = 64 << 20;
        const SLACK: u64 = 16 << 20;
        let before = glibc_in_use_bytes().unwrap();
        let block = std::hint::black_box(vec![0u8; BLOCK as usize]);
        let during = glibc_in_use_bytes().unwrap();
        assert!(during + SLACK >= before + BLOCK, "{before} → {during}");
        drop(block);
        let after = glibc_in_use_bytes().unwrap();
        assert!(after + BLOCK <= during + SLACK, "{during} → {after}");
    }

    /// Once a probe is set, the heap figure is the probe's, and a second
    /// probe is refused. This probe counts its reads and answers with
    /// glibc's figure, so the other tests of this process that read the
    /// heap see what they would without it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_set_probe_answers_for_the_heap() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static READS: AtomicUsize = AtomicUsize::new(0);
        fn counting() -> Option<u64> {
            READS.fetch_add(1, Ordering::SeqCst);
            glibc_in_use_bytes()
        }
        fn other() -> Option<u64> {
            Some(1)
        }
        assert!(set_heap_probe(counting));
        assert!(!set_heap_probe(other));
        let before = READS.load(Ordering::SeqCst);
        assert!(heap_in_use_bytes().is_some());
        assert!(READS.load(Ordering::SeqCst) > before);
    }

    /// glibc takes the cap (this one is its own default, 8 per CPU, so
    /// the other tests of this process run as they would anyway).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_arena_cap_is_accepted() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(set_arena_max(8 * cpus), Some(8 * cpus));
    }
}
