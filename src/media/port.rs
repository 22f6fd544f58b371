//! The RTP port pool (SPEC §4 `server.rtp_ports`): even RTP ports, each with
//! RTCP on the odd port above it (RFC 3550 §11).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::PortRange;

/// Why no RTP port pair could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Every pair of the range is in use: a temporary condition, until
    /// calls end, or a range too small for the load.
    #[error(
        "RTP port range exhausted: all {pairs} port pairs of server.rtp_ports = \"{first}-{last}\" are in use (one pair per call leg)"
    )]
    Exhausted {
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
        /// Pairs in the range.
        pairs: usize,
    },
    /// The range holds no even port with its odd neighbour.
    #[error("RTP port range {first}-{last} has no even/odd pair")]
    Empty {
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },
}

/// Free RTP port pairs. Each allocation takes a random pair from the half
/// of the free ones freed longest ago: random, so a stranger cannot predict
/// a call's ports (SPEC §5), and never one of the most recently freed, so a
/// port is not reused while stray packets of its last call may still arrive.
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    rng: StdRng,
    total: usize,
    range: PortRange,
}

impl PortPool {
    /// All even ports `p` of the range with `p + 1` also in it.
    pub fn new(range: PortRange) -> Result<Self, PortError> {
        let first = u32::from(range.first) + u32::from(range.first % 2);
        let free: VecDeque<u16> = (first..u32::from(range.last))
            .step_by(2)
            .map(|p| p as u16)
            .collect();
        if free.is_empty() {
            return Err(PortError::Empty {
                first: range.first,
                last: range.last,
            });
        }
        let total = free.len();
        Ok(PortPool {
            free,
            rng: StdRng::from_entropy(),
            total,
            range,
        })
    }

    /// Takes a free pair; returns its RTP (even) port.
    pub fn allocate(&mut self) -> Result<u16, PortError> {
        let older_half = self.free.len().div_ceil(2);
        let pick = if older_half > 1 {
            self.rng.gen_range(0..older_half)
        } else {
            0
        };
        self.free.remove(pick).ok_or(PortError::Exhausted {
            first: self.range.first,
            last: self.range.last,
            pairs: self.total,
        })
    }

    /// Returns a pair to the pool (at the back).
    pub fn release(&mut self, port: u16) {
        debug_assert!(!self.free.contains(&port), "port {port} freed twice");
        self.free.push_back(port);
    }

    /// Pairs currently free.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Pairs in the range.
    pub fn capacity(&self) -> usize {
        self.total
    }
}

/// A pool shared by the relay's tasks.
#[derive(Debug, Clone)]
pub struct SharedPortPool(Arc<Mutex<PortPool>>);

/// An allocated pair; returned to the pool when dropped.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    pool: SharedPortPool,
}

impl PortLease {
    /// The RTP (even) port; RTCP is `port + 1`.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.lock().release(self.port);
    }
}

impl SharedPortPool {
    /// Shares a pool.
    pub fn new(pool: PortPool) -> Self {
        SharedPortPool(Arc::new(Mutex::new(pool)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PortPool> {
        // The pool's state stays consistent across a panic elsewhere.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a pair for as long as the lease lives.
    pub fn lease(&self) -> Result<PortLease, PortError> {
        let port = self.lock().allocate()?;
        Ok(PortLease {
            port,
            pool: self.clone(),
        })
    }

    /// Pairs currently free.
    pub fn available(&self) -> usize {
        self.lock().available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_pairs_inside_the_range() {
        let mut p = PortPool::new(PortRange {
            first: 20001,
            last: 20008,
        })
        .unwrap();
        // 20002/3, 20004/5, 20006/7; 20008 has no 20009 in range.
        assert_eq!(p.capacity(), 3);
        let mut got: Vec<u16> = (0..3).map(|_| p.allocate().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![20002, 20004, 20006]);
        assert!(matches!(p.allocate(), Err(PortError::Exhausted { .. })));
        p.release(20004);
        assert_eq!(p.allocate(), Ok(20004));
        assert_eq!(
            PortPool::new(PortRange { first: 7, last: 7 }).unwrap_err(),
            PortError::Empty { first: 7, last: 7 }
        );
        assert_eq!(
            PortPool::new(PortRange {
                first: 65534,
                last: 65535
            })
            .unwrap()
            .capacity(),
            1
        );
    }

    #[test]
    fn leases_return_on_drop_least_recently_freed_first() {
        let pool = SharedPortPool::new(
            PortPool::new(PortRange {
                first: 100,
                last: 105,
            })
            .unwrap(),
        );
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_ne!(a.port(), b.port());
        let freed = a.port();
        drop(a);
        assert_eq!(pool.available(), 2);
        let c = pool.lease().unwrap();
        assert_ne!(c.port(), freed, "the pair freed last waits");
        assert_ne!(c.port(), b.port());
    }

    #[test]
    fn allocation_is_not_predictable() {
        let mut p = PortPool::new(PortRange {
            first: 20000,
            last: 21999,
        })
        .unwrap();
        let got: Vec<u16> = (0..100).map(|_| p.allocate().unwrap()).collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100, "all distinct");
        assert_ne!(got, sorted, "not handed out in port order");
        let steps: std::collections::HashSet<i32> = got
            .windows(2)
            .map(|w| i32::from(w[1]) - i32::from(w[0]))
            .collect();
        assert!(
            steps.len() > 50,
            "the next port is not the last plus a constant"
        );
    }
}
