//! RFC 3261 §10.3 registrar.
