//! Whole-system tests: a real `powerdial serve` process, real sockets on
//! 127.0.0.1, real third-party SIP stacks (SIPp, baresip, PJSIP).

#![allow(clippy::disallowed_methods)] // A driver of real processes: deadlines need the clock.

mod agents_api;
mod amd;
mod api_auth;
mod app;
mod browser_phone;
mod callback;
mod caller_id;
mod calling_hours;
mod calls;
mod calls_failures;
mod capture;
mod console;
mod crash;
mod demo;
mod dnc;
mod flood;
mod lead_dnc;
mod media_hijack;
mod metrics;
mod openapi;
mod peers;
mod phones;
mod register;
mod register_load;
mod scanner;
mod sessions;
mod shutdown;
#[path = "../common/skip.rs"]
mod skip;
mod tls;
mod torture;
mod trunks;
mod two_instances;
