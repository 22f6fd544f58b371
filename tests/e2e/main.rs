//! Whole-system tests: a real `powerdial serve` process, real sockets on
//! 127.0.0.1, real third-party SIP stacks (SIPp, baresip, PJSIP).

#![allow(clippy::disallowed_methods)] // A driver of real processes: deadlines need the clock.

mod app;
mod calls;
mod calls_failures;
mod console;
mod peers;
mod phones;
mod register;
mod sessions;
#[path = "../common/skip.rs"]
mod skip;
mod torture;
mod two_instances;
