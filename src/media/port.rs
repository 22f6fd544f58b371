//! The RTP port pool (SPEC §4 `server.rtp_ports`): even RTP ports, each with
//! RTCP on the odd port above it (RFC 3550 §11).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

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

/// Free RTP port pairs, handed out least-recently-freed first so a port is
/// not reused while stray packets of its last call may still arrive.
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
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
        Ok(PortPool { free, total, range })
    }

    /// Takes a free pair; returns its RTP (even) port.
    pub fn allocate(&mut self) -> Result<u16, PortError> {
        self.free.pop_front().ok_or(PortError::Exhausted {
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
        let got: Vec<u16> = (0..3).map(|_| p.allocate().unwrap()).collect();
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
        assert_eq!((a.port(), b.port()), (100, 102));
        drop(a);
        assert_eq!(pool.available(), 2);
        assert_eq!(pool.lease().unwrap().port(), 104, "100 was freed last");
    }
}
