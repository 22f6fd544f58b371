//! Media: SDP offer/answer (RFC 3264), G.711, the dial-start tone, RFC 4733
//! DTMF, and the anchored RTP relay between an agent's nailed-up leg and the
//! lead leg of each dial (SPEC §1, §5, §6).
//!
//! Cores (`sdp`, `g711`, `tone`, `dtmf`, `rewrite`, `latch`, `relay::core`)
//! take `now` as a parameter and do no I/O; `relay` (the driver) and `port`
//! own sockets and the one timer per agent task.
//!
//! RTCP: each leg binds its RTCP port (RTP port + 1) so phones get no ICMP
//! errors, and what arrives there is read and discarded. Forwarding it would
//! be wrong after SSRC/sequence rewriting (the sender and receiver reports
//! would describe streams the other phone never saw); generating our own
//! reports is left for later. RTP timeouts are therefore based on RTP only.
//!
//! SRTP (`srtp`, keys by `sdes`): on the agent leg only, when its phone is
//! on TLS; the relay decrypts what the phone sends before the core sees
//! it and encrypts what goes to the phone after. The lead leg is plain RTP.

pub mod amd;
pub mod dtmf;
pub mod g711;
pub mod latch;
pub mod port;
pub mod recording;
pub mod relay;
pub mod rewrite;
pub mod sdes;
pub mod sdp;
pub mod srtp;
pub mod tone;
pub mod voicemail;
