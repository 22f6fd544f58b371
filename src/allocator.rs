//! The process's memory allocator (glibc malloc): how many arenas it may
//! keep, and how much heap is in use. SPEC §6 counts memory per active call
//! in the RSS an operator sees, and RSS also holds what the allocator freed
//! but kept.

/// Caps glibc's malloc arenas at the number of CPUs (`mallopt(3)`
/// `M_ARENA_MAX`), unless the operator set `MALLOC_ARENA_MAX` (glibc reads
/// it at start-up; it wins). Call it before the runtime's threads start.
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

/// Heap bytes in use: glibc's chunks in use in every arena plus its
/// mmapped chunks (`mallinfo2(3)`: `uordblks + hblkhd`), headers and
/// alignment included. It walks every arena's free lists under their locks,
/// so it is read at a scrape, not on a hot path. `None` off glibc.
pub fn heap_in_use_bytes() -> Option<u64> {
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
        let before = heap_in_use_bytes().unwrap();
        let block = std::hint::black_box(vec![0u8; BLOCK as usize]);
        let during = heap_in_use_bytes().unwrap();
        assert!(during + SLACK >= before + BLOCK, "{before} → {during}");
        drop(block);
        let after = heap_in_use_bytes().unwrap();
        assert!(after + BLOCK <= during + SLACK, "{during} → {after}");
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
