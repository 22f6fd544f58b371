//! SRTP (RFC 3711) with the AES_CM_128_HMAC_SHA1_80 suite, for the agent
//! side of the relay, and its SDES keys (RFC 4568 `a=crypto`).
//!
//! Why RustCrypto's `aes`, `ctr`, `hmac` and `sha1` and not an SRTP crate:
//! the maintained one (`webrtc-srtp`) brings the webrtc-rs utility stack,
//! allocates a `Bytes` per packet and decrypts by copy; this relay rewrites
//! packets in place in one buffer per task (SPEC §6). The protocol part —
//! key derivation, the packet index and replay window — is short and is
//! checked here against RFC 3711 Appendix B and libsrtp's reference packet;
//! the cryptography is the RustCrypto crates'.
//!
//! Per packet nothing is allocated: the AES key schedule and the keyed
//! HMAC state are made once per context and copied on the stack.
//!
//! SRTCP is not implemented: the relay reads and discards RTCP on every leg
//! (see `media`), so no RTCP leaves towards a phone, clear or not.

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type Ctr = ctr::Ctr128BE<Aes128>;
type HmacSha1 = Hmac<Sha1>;

/// The crypto suite name (RFC 4568 §6.2.1).
pub const AES_CM_128_HMAC_SHA1_80: &str = "AES_CM_128_HMAC_SHA1_80";
/// Master key length (bytes).
pub const MASTER_KEY_LEN: usize = 16;
/// Master salt length (bytes).
pub const MASTER_SALT_LEN: usize = 14;
/// Authentication tag length of the `_80` suite (bytes).
pub const TAG_LEN: usize = 10;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// Shorter than an RTP header plus the tag, or a header that does not parse.
    #[error("not an SRTP packet")]
    Malformed,
    /// The authentication tag does not match (RFC 3711 §3.3 step 5).
    #[error("authentication failed")]
    AuthFailed,
    /// The index was seen already or is older than the window (§3.3.2).
    #[error("replayed packet")]
    Replayed,
    /// No room after the payload for the tag.
    #[error("no room for the authentication tag")]
    NoRoom,
}

/// A master key and salt (RFC 3711 §8.2), as carried by SDES.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    /// The 128-bit master key.
    pub key: [u8; MASTER_KEY_LEN],
    /// The 112-bit master salt.
    pub salt: [u8; MASTER_SALT_LEN],
}

impl std::fmt::Debug for MasterKey {
    // Keys are never printed (logs included).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh random key and salt (RFC 4568 §6.1: from a good random source).
    pub fn random() -> Self {
        use rand::RngCore;
        let mut k = MasterKey {
            key: [0; MASTER_KEY_LEN],
            salt: [0; MASTER_SALT_LEN],
        };
        let mut rng = rand::rngs::OsRng;
        rng.fill_bytes(&mut k.key);
        rng.fill_bytes(&mut k.salt);
        k
    }

    /// The `inline:` key-salt, base64 of key ‖ salt (RFC 4568 §6.1).
    pub fn inline(&self) -> String {
        let mut raw = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        raw[..MASTER_KEY_LEN].copy_from_slice(&self.key);
        raw[MASTER_KEY_LEN..].copy_from_slice(&self.salt);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

/// One `a=crypto` attribute (RFC 4568 §4, §9.1), restricted to what we
/// use: tag, suite, the first `inline:` key (lifetime and MKI accepted and
/// ignored: one key per call, no MKI in our packets — a key with an MKI
/// is refused, as its packets would carry one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttr {
    /// The tag (1–999999999) that the answer echoes.
    pub tag: u32,
    /// The suite name, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub suite: String,
    /// The key, when the suite is one we know and its key parses.
    pub key: Option<MasterKey>,
}

/// Why an `a=crypto` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoAttrError {
    /// Not `TAG SUITE KEY-PARAMS`.
    #[error("expected `tag suite inline:key`")]
    Shape,
    /// The tag is not 1–9 digits.
    #[error("bad crypto tag")]
    Tag,
}

impl CryptoAttr {
    /// Parses the value after `a=crypto:` (RFC 4568 §9.1). A suite we do
    /// not know parses with `key: None` (the offer may list others).
    pub fn parse(value: &str) -> Result<Self, CryptoAttrError> {
        let mut parts = value.split_ascii_whitespace();
        let (Some(tag), Some(suite), Some(params)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoAttrError::Shape);
        };
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CryptoAttrError::Tag);
        }
        let tag: u32 = tag.parse().map_err(|_| CryptoAttrError::Tag)?;
        let key = if suite == AES_CM_128_HMAC_SHA1_80 {
            params
                .split(';')
                .next()
                .and_then(|p| p.strip_prefix("inline:"))
                .and_then(parse_inline)
        } else {
            None
        };
        Ok(CryptoAttr {
            tag,
            suite: suite.to_string(),
            key,
        })
    }

    /// Our attribute value for `key` under `tag`.
    pub fn print(tag: u32, key: &MasterKey) -> String {
        format!("{tag} {AES_CM_128_HMAC_SHA1_80} inline:{}", key.inline())
    }
}

/// `base64(key‖salt)[|lifetime][|MKI:length]`: the key, unless it has an MKI.
fn parse_inline(s: &str) -> Option<MasterKey> {
    let mut fields = s.split('|');
    let b64 = fields.next()?;
    for f in fields {
        if f.contains(':') {
            return None; // an MKI: its packets would carry it
        }
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    if raw.len() != MASTER_KEY_LEN + MASTER_SALT_LEN {
        return None;
    }
    let mut k = MasterKey {
        key: [0; MASTER_KEY_LEN],
        salt: [0; MASTER_SALT_LEN],
    };
    k.key.copy_from_slice(&raw[..MASTER_KEY_LEN]);
    k.salt.copy_from_slice(&raw[MASTER_KEY_LEN..]);
    Some(k)
}

/// The AES-CM PRF of RFC 3711 §4.3.3 with a key derivation rate of 0:
/// `out` = AES-CM(master key, (label·2^48 XOR salt)·2^16).
fn derive(master: &Aes128, salt: &[u8; MASTER_SALT_LEN], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..MASTER_SALT_LEN].copy_from_slice(salt);
    iv[7] ^= label;
    out.fill(0);
    let mut ctr = Ctr::from_core(ctr::CtrCore::inner_iv_init(master.clone(), &iv.into()));
    ctr.apply_keystream(out);
}

/// Session keys of one direction (RFC 3711 §4.3).
#[derive(Clone)]
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; MASTER_SALT_LEN],
    mac: HmacSha1,
}

impl SessionKeys {
    fn new(master: &MasterKey) -> Self {
        let m = Aes128::new(&master.key.into());
        let mut key = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut salt = [0u8; MASTER_SALT_LEN];
        derive(&m, &master.salt, 0, &mut key);
        derive(&m, &master.salt, 1, &mut auth);
        derive(&m, &master.salt, 2, &mut salt);
        // HMAC zero-pads a key shorter than its block (RFC 2104 §2), so
        // the padded 64-byte key is the same key, with no error path.
        let mut block = [0u8; 64];
        block[..auth.len()].copy_from_slice(&auth);
        let mac = <HmacSha1 as KeyInit>::new(&block.into());
        SessionKeys {
            cipher: Aes128::new(&key.into()),
            salt,
            mac,
        }
    }

    /// AES-CM over `payload` for `ssrc` and packet index `index` (§4.1.1):
    /// IV = (salt·2^16) XOR (SSRC·2^64) XOR (index·2^16).
    fn crypt(&self, ssrc: u32, index: u64, payload: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..MASTER_SALT_LEN].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        let mut ctr = Ctr::from_core(ctr::CtrCore::inner_iv_init(self.cipher.clone(), &iv.into()));
        ctr.apply_keystream(payload);
    }

    /// HMAC-SHA1(packet ‖ ROC), first 80 bits (§4.2, §4.2.1).
    fn tag(&self, packet: &[u8], roc: u32) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(packet);
        mac.update(&roc.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&full[..TAG_LEN]);
        t
    }
}

/// Where the payload starts, the SSRC and sequence number of an RTP
/// packet (RFC 3550 §5.1, §5.3.1): after CSRCs and any header extension.
fn header(packet: &[u8]) -> Option<(usize, u32, u16)> {
    let first = *packet.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(first & 0x0f);
    if packet.len() < len {
        return None;
    }
    if first & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        if packet.len() < len {
            return None;
        }
    }
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    Some((len, ssrc, seq))
}

/// Protects outgoing RTP of one stream (RFC 3711 §3.3): our master key.
#[derive(Clone)]
pub struct SrtpSender {
    keys: SessionKeys,
    roc: u32,
    last_seq: Option<u16>,
}

impl SrtpSender {
    /// A sender keyed with `master`.
    pub fn new(master: &MasterKey) -> Self {
        SrtpSender {
            keys: SessionKeys::new(master),
            roc: 0,
            last_seq: None,
        }
    }

    /// Encrypts the RTP packet in `buf[..len]` in place and appends the
    /// tag; returns the SRTP length. `buf` needs [`TAG_LEN`] bytes of room.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if buf.len() < len + TAG_LEN {
            return Err(SrtpError::NoRoom);
        }
        let (start, ssrc, seq) = header(&buf[..len]).ok_or(SrtpError::Malformed)?;
        // §3.3.1: the sender increments ROC when SEQ wraps. The relay sends
        // in order, so a smaller SEQ after a large one is a wrap.
        if let Some(last) = self.last_seq {
            if seq < last && last - seq > 0x8000 {
                self.roc = self.roc.wrapping_add(1);
            }
        }
        self.last_seq = Some(seq);
        let index = (u64::from(self.roc) << 16) | u64::from(seq);
        self.keys.crypt(ssrc, index, &mut buf[start..len]);
        let tag = self.keys.tag(&buf[..len], self.roc);
        buf[len..len + TAG_LEN].copy_from_slice(&tag);
        Ok(len + TAG_LEN)
    }
}

/// Width of the replay window (RFC 3711 §3.3.2: at least 64).
const REPLAY_WINDOW: u64 = 64;

/// Checks and decrypts incoming SRTP of one stream: the peer's master key.
#[derive(Clone)]
pub struct SrtpReceiver {
    keys: SessionKeys,
    /// Highest index received (s_l and ROC together), once one arrived.
    highest: Option<u64>,
    /// Bit i set: index `highest - i` was received.
    window: u64,
}

impl SrtpReceiver {
    /// A receiver keyed with the peer's `master`.
    pub fn new(master: &MasterKey) -> Self {
        SrtpReceiver {
            keys: SessionKeys::new(master),
            highest: None,
            window: 0,
        }
    }

    /// The index guessed for `seq` (RFC 3711 Appendix A).
    fn estimate(&self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            return u64::from(seq);
        };
        let roc = h >> 16;
        let s_l = (h & 0xffff) as u16;
        let v = if s_l < 0x8000 {
            if seq > s_l && seq - s_l > 0x8000 {
                roc.wrapping_sub(1)
            } else {
                roc
            }
        } else if s_l - 0x8000 > seq {
            roc + 1
        } else {
            roc
        };
        ((v & 0xffff_ffff) << 16) | u64::from(seq)
    }

    /// Authenticates and decrypts the SRTP packet in `buf[..len]` in place
    /// (§3.3 steps 1–6); returns the RTP length. Refused packets leave the
    /// replay state untouched.
    pub fn unprotect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let rtp_len = len.checked_sub(TAG_LEN).ok_or(SrtpError::Malformed)?;
        let (start, ssrc, seq) = header(&buf[..rtp_len]).ok_or(SrtpError::Malformed)?;
        let index = self.estimate(seq);
        if let Some(h) = self.highest {
            if index <= h {
                let back = h - index;
                if back >= REPLAY_WINDOW || self.window & (1 << back) != 0 {
                    return Err(SrtpError::Replayed);
                }
            }
        }
        let roc = (index >> 16) as u32;
        let expected = self.keys.tag(&buf[..rtp_len], roc);
        // Constant time, so the tag cannot be guessed byte by byte.
        let ok: bool = subtle::ConstantTimeEq::ct_eq(&expected[..], &buf[rtp_len..len]).into();
        if !ok {
            return Err(SrtpError::AuthFailed);
        }
        self.keys.crypt(ssrc, index, &mut buf[start..rtp_len]);
        match self.highest {
            Some(h) if index <= h => self.window |= 1 << (h - index),
            Some(h) => {
                let shift = index - h;
                self.window = if shift >= REPLAY_WINDOW {
                    1
                } else {
                    (self.window << shift) | 1
                };
                self.highest = Some(index);
            }
            None => {
                self.window = 1;
                self.highest = Some(index);
            }
        }
        Ok(rtp_len)
    }
}

/// Both directions of the agent leg: the phone's key for what it sends,
/// ours for what we send (RFC 4568 §6.1: each side's own key).
#[derive(Clone)]
pub struct SrtpSession {
    /// Decrypts the phone's packets.
    pub rx: SrtpReceiver,
    /// Encrypts ours.
    pub tx: SrtpSender,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpSession(..)")
    }
}

impl SrtpSession {
    /// A session with `ours` for sending and `theirs` for receiving.
    pub fn new(ours: &MasterKey, theirs: &MasterKey) -> Self {
        SrtpSession {
            rx: SrtpReceiver::new(theirs),
            tx: SrtpSender::new(ours),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).expect("hex")
    }

    fn master(key: &str, salt: &str) -> MasterKey {
        let mut m = MasterKey {
            key: [0; 16],
            salt: [0; 14],
        };
        m.key.copy_from_slice(&hex(key));
        m.salt.copy_from_slice(&hex(salt));
        m
    }

    /// RFC 3711 Appendix B.2: the AES-CM keystream for session key
    /// 2B7E…4F3C, salt F0F1…FCFD, SSRC 0, index 0.
    #[test]
    fn aes_cm_keystream_matches_rfc3711_b2() {
        let keys = SessionKeys {
            cipher: Aes128::new(
                &<[u8; 16]>::try_from(hex("2B7E151628AED2A6ABF7158809CF4F3C"))
                    .expect("16")
                    .into(),
            ),
            salt: <[u8; 14]>::try_from(hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")).expect("14"),
            mac: <HmacSha1 as Mac>::new_from_slice(b"k").expect("hmac"),
        };
        let mut stream = vec![0u8; 16 * 3];
        keys.crypt(0, 0, &mut stream);
        assert_eq!(
            stream,
            hex("E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB 41E95B3BB0A2E8DD477901E4FCA894C0")
        );
        // Blocks 0xFEFF..0xFF01 of the same stream.
        let mut long = vec![0u8; 16 * 0xff02];
        keys.crypt(0, 0, &mut long);
        assert_eq!(
            &long[16 * 0xfeff..],
            &hex("EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE 6A2CC3787889374FBEB4C81B17BA6C44")[..]
        );
    }

    /// RFC 3711 Appendix B.3: session keys from master key E1F9…4139.
    #[test]
    fn key_derivation_matches_rfc3711_b3() {
        let m = master(
            "E1F97A0D3E018BE0D64FA32C06DE4139",
            "0EC675AD498AFEEBB6960B3AABE6",
        );
        let aes = Aes128::new(&m.key.into());
        let mut key = [0u8; 16];
        derive(&aes, &m.salt, 0, &mut key);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        derive(&aes, &m.salt, 2, &mut salt);
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(&aes, &m.salt, 1, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
        // The session salt is what SessionKeys keeps.
        assert_eq!(
            SessionKeys::new(&m).salt.to_vec(),
            hex("30CBBC08863D8C85D49DB34A9AE1")
        );
    }

    /// libsrtp's reference packet (srtp_driver.c, AES_CM_128_HMAC_SHA1_80
    /// with the RFC 3711 B.3 master key): protect gives it, unprotect
    /// gives the plaintext back, a replay and a flipped bit are refused.
    #[test]
    fn reference_packet_round_trips() {
        let m = master(
            "E1F97A0D3E018BE0D64FA32C06DE4139",
            "0EC675AD498AFEEBB6960B3AABE6",
        );
        let plain = hex("800f1234decafbadcafebabe abababababababababababababababab");
        let cipher =
            hex("800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb");
        let mut buf = [0u8; 64];
        buf[..plain.len()].copy_from_slice(&plain);
        let n = SrtpSender::new(&m)
            .protect(&mut buf, plain.len())
            .expect("protect");
        assert_eq!(&buf[..n], &cipher[..]);

        let mut rx = SrtpReceiver::new(&m);
        let mut buf = cipher.clone();
        let n = rx.unprotect(&mut buf, cipher.len()).expect("unprotect");
        assert_eq!(&buf[..n], &plain[..]);
        let mut again = cipher.clone();
        assert_eq!(
            rx.unprotect(&mut again, cipher.len()),
            Err(SrtpError::Replayed)
        );

        let mut rx = SrtpReceiver::new(&m);
        let mut tampered = cipher.clone();
        tampered[14] ^= 1;
        assert_eq!(
            rx.unprotect(&mut tampered, cipher.len()),
            Err(SrtpError::AuthFailed)
        );
        // The refused packet left no trace: the genuine one still passes.
        let mut buf = cipher.clone();
        assert!(rx.unprotect(&mut buf, cipher.len()).is_ok());
    }

    /// Sequence numbers that wrap: the sender's ROC and the receiver's
    /// estimate (Appendix A) agree; late packets inside the window pass.
    #[test]
    fn rollover_and_reordering() {
        let k = MasterKey::random();
        let mut tx = SrtpSender::new(&k);
        let mut rx = SrtpReceiver::new(&k);
        let mut packets = Vec::new();
        for i in 0..40u16 {
            let seq = 0xfff0u16.wrapping_add(i);
            let mut buf = [0u8; 12 + 160 + TAG_LEN];
            buf[0] = 0x80;
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            buf[12..172].fill(i as u8);
            let n = tx.protect(&mut buf, 172).expect("protect");
            packets.push((buf, n, i));
        }
        assert_eq!(tx.roc, 1);
        // Deliver with every pair swapped.
        for pair in packets
            .chunks(2)
            .rev()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            for (buf, n, i) in pair.iter().rev() {
                let mut b = *buf;
                let len = rx.unprotect(&mut b, *n).expect("unprotect");
                assert_eq!(len, 172);
                assert!(b[12..172].iter().all(|x| *x == *i as u8));
            }
        }
    }

    /// RFC 4568 §9.1 syntax: parse, print, unknown suites, MKI refused.
    #[test]
    fn sdes_attribute_parse_and_print() {
        let a = CryptoAttr::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32",
        );
        // An MKI: no usable key.
        assert_eq!(a.as_ref().map(|a| a.key.is_some()), Ok(false));
        let a = CryptoAttr::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
        )
        .expect("parse");
        assert_eq!(a.tag, 1);
        let key = a.key.expect("key");
        assert_eq!(key.inline(), "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR");
        let printed = CryptoAttr::print(7, &key);
        assert_eq!(
            printed,
            "7 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
        );
        assert_eq!(CryptoAttr::parse(&printed).expect("reparse").key, Some(key));
        let other = CryptoAttr::parse("2 AES_256_CM_HMAC_SHA1_80 inline:abcd").expect("parse");
        assert_eq!((other.tag, other.key), (2, None));
        assert_eq!(
            CryptoAttr::parse("x AES_CM_128_HMAC_SHA1_80 inline:a"),
            Err(CryptoAttrError::Tag)
        );
        assert_eq!(
            CryptoAttr::parse("1 AES_CM_128_HMAC_SHA1_80"),
            Err(CryptoAttrError::Shape)
        );
        // A short key is no key.
        let short = CryptoAttr::parse("1 AES_CM_128_HMAC_SHA1_80 inline:QUJD").expect("parse");
        assert_eq!(short.key, None);
        // Keys stay out of Debug output.
        assert_eq!(format!("{:?}", MasterKey::random()), "MasterKey(..)");
    }
}
