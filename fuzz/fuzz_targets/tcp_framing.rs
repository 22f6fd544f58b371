//! A TCP byte stream cut into SIP messages (RFC 3261 §18.3:
//! Content-Length framing, CRLF keep-alives of RFC 5626 §3.5.1), fed in
//! pieces of varying size as a network delivers them. What the framer
//! holds stays bounded by the message size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use powerdial::sip::message::StreamFramer;

const MAX: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let mut framer = StreamFramer::new(MAX);
    for chunk in rest.chunks(piece) {
        framer.push(chunk);
        loop {
            match framer.next_message() {
                Ok(Some(m)) => assert!(m.len() <= MAX + 4, "a message of {} bytes", m.len()),
                Ok(None) => break,
                // The connection is closed on a framing error.
                Err(_) => return,
            }
        }
        let _ = framer.take_pings();
        assert!(
            framer.buffered() <= MAX + piece,
            "the framer holds {} bytes",
            framer.buffered()
        );
    }
});
