//! The process's memory allocator (glibc malloc): how much heap is in use. SPEC §6 counts memory per active call
//! in the RSS an operator sees, and RSS also holds what the allocator freed
//! but kept.

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
}
