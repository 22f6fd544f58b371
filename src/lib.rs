//! powerdial: a SIP-native power dialer server.
//!
//! The crate is split as `DESIGN.md` lays out: cores with no I/O and no clock
//! of their own (SIP transactions and dialogs, the registrar's decisions, the
//! queue engine, the Smart View compiler) and thin drivers that own sockets,
//! timers, tasks and the database.

pub mod allocator;
pub mod call;
pub mod config;
pub mod dialer;
pub mod http;
pub mod leads;
pub mod media;
pub mod metrics;
pub mod server;
pub mod sip;
pub(crate) mod sockaddr;
pub mod store;
