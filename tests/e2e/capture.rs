//! A packet capture of the loopback interface, as tcpdump would take it:
//! an `AF_PACKET` socket on `lo` (needs root or CAP_NET_RAW, as tcpdump
//! does), every IPv4 TCP and UDP packet kept with its ports and payload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One captured packet.
#[derive(Debug, Clone)]
pub struct Packet {
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// The transport payload.
    pub payload: Vec<u8>,
}

/// A capture running on its own thread until [`Capture::stop`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    packets: Arc<Mutex<Vec<Packet>>>,
    thread: Option<JoinHandle<()>>,
}

fn parse(frame: &[u8]) -> Option<Packet> {
    // lo frames carry an Ethernet header of zeros.
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let protocol = *ip.get(9)?;
    let l4 = ip.get(ihl..total.min(ip.len()))?;
    let (sp, dp) = (
        u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
        u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
    );
    let payload = match protocol {
        17 => l4.get(8..)?,
        6 => l4.get(usize::from(l4.get(12)? >> 4) * 4..)?,
        _ => return None,
    };
    Some(Packet {
        protocol,
        src_port: sp,
        dst_port: dp,
        payload: payload.to_vec(),
    })
}

impl Capture {
    /// Starts capturing on `lo`; panics (saying why) without the privilege.
    pub fn start() -> Capture {
        // SAFETY: plain socket calls on a descriptor this function owns.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "a loopback capture needs root or CAP_NET_RAW (as tcpdump does): {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new("lo").expect("name");
        // SAFETY: a NUL-terminated name; the sockaddr is fully initialised.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = index as i32;
            let r = libc::bind(
                fd,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind to lo: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let big: libc::c_int = 8 << 20;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::addr_of!(big).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), packets.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: `buf` outlives the call and its length is passed.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                if let Some(pkt) = parse(&buf[..n as usize]) {
                    p.lock().expect("lock").push(pkt);
                }
            }
            // SAFETY: the descriptor is ours and closed once.
            unsafe { libc::close(fd) };
        });
        Capture {
            stop,
            packets,
            thread: Some(thread),
        }
    }

    /// Stops and returns what was captured.
    pub fn stop(mut self) -> Vec<Packet> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.packets.lock().expect("lock"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
