//! The dialer (SPEC §1–§2): the pure queue engine that decides which lead each
//! agent's next call targets; sessions and agent state machines drive it.

pub mod agent;
pub mod claim;
pub mod dial;
pub mod directory;
pub mod hours;
pub mod queue;
pub mod record;
pub mod session;
pub mod view;
