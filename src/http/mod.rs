//! HTTP API (SPEC §4).
