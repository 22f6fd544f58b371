//! Socket addresses as the kernel reads and writes them
//! (`sockaddr_storage`), for the batched UDP calls (`recvmmsg(2)`,
//! `sendmmsg(2)`) of the SIP transport and the RTP relay. Written by hand:
//! `socket2::SockAddr` converts by copying the whole storage per datagram,
//! and the relay does this per RTP packet.

use std::net::SocketAddr;

/// The address in a `sockaddr_storage` the kernel filled.
pub(crate) fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`,
            // and `sockaddr_storage` is aligned for every address type.
            let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `a` into `s` as the kernel wants it; returns its length.
pub(crate) fn write_sockaddr(a: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(a) => {
            // SAFETY: `sockaddr_storage` is large and aligned enough for a
            // `sockaddr_in`.
            let sin = unsafe { &mut *std::ptr::from_mut(s).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            sin.sin_zero = [0; 8];
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe { &mut *std::ptr::from_mut(s).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}
