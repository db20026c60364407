//! USM cryptography (RFC 3414, RFC 7860, RFC 3826, draft-blumenthal-aes-usm-04), pure
//! functions: passphrase to key, key localisation, HMAC authentication, DES-CBC and AES-CFB
//! privacy.
//!
//! Key lengths and MAC truncations:
//!
//! | auth | hash | key | MAC octets |
//! |---|---|---|---|
//! | MD5 (RFC 3414 §6) | MD5 | 16 | 12 |
//! | SHA (RFC 3414 §7) | SHA-1 | 20 | 12 |
//! | SHA-224 (RFC 7860) | SHA-224 | 28 | 16 |
//! | SHA-256 | SHA-256 | 32 | 24 |
//! | SHA-384 | SHA-384 | 48 | 32 |
//! | SHA-512 | SHA-512 | 64 | 48 |
//!
//! Privacy keys are derived from the privacy passphrase with the *authentication* hash and
//! localised the same way (RFC 3414 §11.2, RFC 3826 §1.2). AES-192/256 need more key octets than
//! MD5 or SHA-1 give (SHA-256 and longer give enough, and then nothing is extended). Two
//! extensions exist, and Net-SNMP 5.9 offers both:
//! - `AES-192` / `AES-256` (draft-blumenthal-aes-usm-04 §3.1.2.1): `Kul = Kul || H(Kul)` until
//!   long enough;
//! - `AES-192-C` / `AES-256-C` ("Cisco", draft-reeder-snmpv3-usm-3desede-00 §2.1):
//!   `Kul = Kul || localize(password_to_key(Kul))`, the extension most network devices use. It
//!   costs a 1 MiB digest per (user, engine), so the receiver derives it only after a message
//!   authenticated and caches it.

use aes::{Aes128, Aes192, Aes256};
use cbc::cipher::{block_padding::NoPadding, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// Authentication protocols (RFC 3414, RFC 7860).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AuthProtocol {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA")]
    Sha1,
    #[serde(rename = "SHA-224")]
    Sha224,
    #[serde(rename = "SHA-256")]
    Sha256,
    #[serde(rename = "SHA-384")]
    Sha384,
    #[serde(rename = "SHA-512")]
    Sha512,
}

/// Privacy protocols: DES-CBC (RFC 3414 §8), AES-CFB-128 (RFC 3826), AES-192/256 with the
/// Blumenthal key extension (Net-SNMP's `AES-192`/`AES-256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PrivProtocol {
    #[serde(rename = "DES")]
    Des,
    #[serde(rename = "AES", alias = "AES-128")]
    Aes128,
    #[serde(rename = "AES-192")]
    Aes192,
    #[serde(rename = "AES-256")]
    Aes256,
    #[serde(rename = "AES-192-C")]
    Aes192Reeder,
    #[serde(rename = "AES-256-C")]
    Aes256Reeder,
}

impl AuthProtocol {
    /// Octets of `msgAuthenticationParameters` (the truncated HMAC).
    pub fn mac_len(self) -> usize {
        match self {
            AuthProtocol::Md5 | AuthProtocol::Sha1 => 12,
            AuthProtocol::Sha224 => 16,
            AuthProtocol::Sha256 => 24,
            AuthProtocol::Sha384 => 32,
            AuthProtocol::Sha512 => 48,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AuthProtocol::Md5 => "MD5",
            AuthProtocol::Sha1 => "SHA",
            AuthProtocol::Sha224 => "SHA-224",
            AuthProtocol::Sha256 => "SHA-256",
            AuthProtocol::Sha384 => "SHA-384",
            AuthProtocol::Sha512 => "SHA-512",
        }
    }

    fn hash(self, parts: &[&[u8]]) -> Vec<u8> {
        fn h<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            AuthProtocol::Md5 => h::<Md5>(parts),
            AuthProtocol::Sha1 => h::<Sha1>(parts),
            AuthProtocol::Sha224 => h::<Sha224>(parts),
            AuthProtocol::Sha256 => h::<Sha256>(parts),
            AuthProtocol::Sha384 => h::<Sha384>(parts),
            AuthProtocol::Sha512 => h::<Sha512>(parts),
        }
    }

    /// RFC 3414 A.2: the digest of 1 MiB of the passphrase repeated (`Ku`).
    pub fn password_to_key(self, passphrase: &[u8]) -> Vec<u8> {
        fn h<D: Digest>(pass: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            let mut buf = [0u8; 64];
            let mut index = 0usize;
            for _ in 0..(1_048_576 / 64) {
                for b in buf.iter_mut() {
                    *b = pass[index % pass.len()];
                    index += 1;
                }
                d.update(buf);
            }
            d.finalize().to_vec()
        }
        if passphrase.is_empty() {
            // Config validation refuses empty passphrases; never divide by zero here.
            return self.hash(&[]);
        }
        match self {
            AuthProtocol::Md5 => h::<Md5>(passphrase),
            AuthProtocol::Sha1 => h::<Sha1>(passphrase),
            AuthProtocol::Sha224 => h::<Sha224>(passphrase),
            AuthProtocol::Sha256 => h::<Sha256>(passphrase),
            AuthProtocol::Sha384 => h::<Sha384>(passphrase),
            AuthProtocol::Sha512 => h::<Sha512>(passphrase),
        }
    }

    /// RFC 3414 §2.6: `Kul = H(Ku || snmpEngineID || Ku)`.
    pub fn localize(self, ku: &[u8], engine_id: &[u8]) -> Vec<u8> {
        self.hash(&[ku, engine_id, ku])
    }

    /// The full HMAC under `key` of the concatenation of `parts`, to be truncated to
    /// [`AuthProtocol::mac_len`].
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn m<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC accepts keys of any length.
            let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            AuthProtocol::Md5 => m::<Hmac<Md5>>(key, parts),
            AuthProtocol::Sha1 => m::<Hmac<Sha1>>(key, parts),
            AuthProtocol::Sha224 => m::<Hmac<Sha224>>(key, parts),
            AuthProtocol::Sha256 => m::<Hmac<Sha256>>(key, parts),
            AuthProtocol::Sha384 => m::<Hmac<Sha384>>(key, parts),
            AuthProtocol::Sha512 => m::<Hmac<Sha512>>(key, parts),
        }
    }

    /// The truncated MAC of a whole message whose `msgAuthenticationParameters` are zeroed.
    pub fn mac(self, key: &[u8], msg_with_zeroed_params: &[u8]) -> Vec<u8> {
        self.mac_with_params_zeroed(key, msg_with_zeroed_params, 0..0)
    }

    /// The truncated MAC of `msg` as if the bytes in `params` (the contents of
    /// `msgAuthenticationParameters`) were zero (RFC 3414 §6.3.2 / §7.3.2), without copying it.
    pub fn mac_with_params_zeroed(
        self,
        key: &[u8],
        msg: &[u8],
        params: std::ops::Range<usize>,
    ) -> Vec<u8> {
        const ZEROS: [u8; 64] = [0; 64];
        let zeros = &ZEROS[..params.len().min(64)];
        let (head, tail) = (
            msg.get(..params.start).unwrap_or(msg),
            msg.get(params.end..).unwrap_or(&[]),
        );
        let mut full = self.hmac(key, &[head, zeros, tail]);
        full.truncate(self.mac_len());
        full
    }
}

/// Constant-time comparison of two MACs (a timing side channel must not reveal a prefix).
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl PrivProtocol {
    /// Octets of localised key the cipher uses (DES: key 8 + pre-IV 8).
    pub fn key_len(self) -> usize {
        match self {
            PrivProtocol::Des | PrivProtocol::Aes128 => 16,
            PrivProtocol::Aes192 | PrivProtocol::Aes192Reeder => 24,
            PrivProtocol::Aes256 | PrivProtocol::Aes256Reeder => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PrivProtocol::Des => "DES",
            PrivProtocol::Aes128 => "AES-128",
            PrivProtocol::Aes192 => "AES-192",
            PrivProtocol::Aes256 => "AES-256",
            PrivProtocol::Aes192Reeder => "AES-192-C",
            PrivProtocol::Aes256Reeder => "AES-256-C",
        }
    }

    /// True if [`PrivProtocol::fit_key`] may cost a 1 MiB digest.
    pub fn expensive_key(self) -> bool {
        matches!(
            self,
            PrivProtocol::Aes192Reeder | PrivProtocol::Aes256Reeder
        )
    }

    /// Makes a key localised for `engine_id` long enough for this cipher (as Net-SNMP does; see
    /// the module doc), then cuts it to [`PrivProtocol::key_len`].
    pub fn fit_key(self, auth: AuthProtocol, mut kul: Vec<u8>, engine_id: &[u8]) -> Vec<u8> {
        let need = self.key_len();
        match self {
            PrivProtocol::Aes192 | PrivProtocol::Aes256 => {
                // draft-blumenthal-aes-usm-04 §3.1.2.1: Kul = Kul || H(Kul), repeated.
                while kul.len() < need {
                    let more = auth.hash(&[&kul]);
                    kul.extend_from_slice(&more);
                }
            }
            PrivProtocol::Aes192Reeder | PrivProtocol::Aes256Reeder => {
                // Reeder §2.1: the localised key is itself taken as a passphrase.
                while kul.len() < need {
                    let ku = auth.password_to_key(&kul);
                    let more = auth.localize(&ku, engine_id);
                    kul.extend_from_slice(&more);
                }
            }
            PrivProtocol::Des | PrivProtocol::Aes128 => {}
        }
        kul.truncate(need);
        kul
    }

    /// Decrypts `msgData`'s encryptedPDU. `None` if the lengths cannot be right (the caller
    /// counts a decryption error). The plaintext may carry padding after the scoped PDU (DES).
    pub fn decrypt(
        self,
        key: &[u8],
        boots: u32,
        time: u32,
        salt: &[u8],
        ciphertext: &[u8],
    ) -> Option<Vec<u8>> {
        if salt.len() != 8 || key.len() < self.key_len() {
            return None;
        }
        let mut buf = ciphertext.to_vec();
        match self {
            PrivProtocol::Des => {
                // RFC 3414 §8.3.2: the length must be a multiple of 8; IV = pre-IV XOR salt.
                if !buf.len().is_multiple_of(8) {
                    return None;
                }
                let iv = des_iv(key, salt);
                let dec = cbc::Decryptor::<des::Des>::new_from_slices(&key[..8], &iv).ok()?;
                dec.decrypt_padded::<NoPadding>(&mut buf).ok()?;
            }
            PrivProtocol::Aes128 => cfb_decrypt::<Aes128>(key, boots, time, salt, &mut buf)?,
            PrivProtocol::Aes192 => cfb_decrypt::<Aes192>(key, boots, time, salt, &mut buf)?,
            PrivProtocol::Aes192Reeder => cfb_decrypt::<Aes192>(key, boots, time, salt, &mut buf)?,
            PrivProtocol::Aes256 | PrivProtocol::Aes256Reeder => {
                cfb_decrypt::<Aes256>(key, boots, time, salt, &mut buf)?
            }
        }
        Some(buf)
    }

    /// Encrypts a scoped PDU with the given 8-octet salt (RFC 3414 §8.1.1.1, RFC 3826 §3.1.2.1).
    pub fn encrypt(
        self,
        key: &[u8],
        boots: u32,
        time: u32,
        salt: &[u8; 8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut buf = plaintext.to_vec();
        match self {
            PrivProtocol::Des => {
                // RFC 3414 §8.1.1.2: pad to a multiple of 8 (any padding; the receiver ignores
                // what follows the scoped PDU).
                let padded = buf.len().div_ceil(8) * 8;
                buf.resize(padded, 0);
                let iv = des_iv(key, salt);
                let enc = cbc::Encryptor::<des::Des>::new_from_slices(&key[..8], &iv)
                    .expect("DES key is 8 octets and IV 8 octets by construction");
                let len = buf.len();
                enc.encrypt_padded::<NoPadding>(&mut buf, len)
                    .expect("buffer is a multiple of the block size");
            }
            PrivProtocol::Aes128 => cfb_encrypt::<Aes128>(key, boots, time, salt, &mut buf),
            PrivProtocol::Aes192 => cfb_encrypt::<Aes192>(key, boots, time, salt, &mut buf),
            PrivProtocol::Aes192Reeder => cfb_encrypt::<Aes192>(key, boots, time, salt, &mut buf),
            PrivProtocol::Aes256 | PrivProtocol::Aes256Reeder => {
                cfb_encrypt::<Aes256>(key, boots, time, salt, &mut buf)
            }
        }
        buf
    }
}

fn des_iv(key: &[u8], salt: &[u8]) -> [u8; 8] {
    let mut iv = [0u8; 8];
    for (i, b) in iv.iter_mut().enumerate() {
        *b = key[8 + i] ^ salt[i];
    }
    iv
}

/// RFC 3826 §3.1.2.1: IV = boots (4, big-endian) || time (4) || salt (8).
fn aes_iv(boots: u32, time: u32, salt: &[u8]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..4].copy_from_slice(&boots.to_be_bytes());
    iv[4..8].copy_from_slice(&time.to_be_bytes());
    iv[8..].copy_from_slice(&salt[..8]);
    iv
}

fn cfb_decrypt<C>(key: &[u8], boots: u32, time: u32, salt: &[u8], buf: &mut [u8]) -> Option<()>
where
    cfb_mode::Decryptor<C>: KeyIvInit,
    C: cbc::cipher::BlockCipherEncrypt,
{
    let iv = aes_iv(boots, time, salt);
    let klen = <cfb_mode::Decryptor<C> as cbc::cipher::KeySizeUser>::key_size();
    let dec = cfb_mode::Decryptor::<C>::new_from_slices(key.get(..klen)?, &iv).ok()?;
    dec.decrypt(buf);
    Some(())
}

fn cfb_encrypt<C>(key: &[u8], boots: u32, time: u32, salt: &[u8], buf: &mut [u8])
where
    cfb_mode::Encryptor<C>: KeyIvInit,
    C: cbc::cipher::BlockCipherEncrypt,
{
    let iv = aes_iv(boots, time, salt);
    let klen = <cfb_mode::Encryptor<C> as cbc::cipher::KeySizeUser>::key_size();
    let enc = cfb_mode::Encryptor::<C>::new_from_slices(&key[..klen], &iv)
        .expect("AES key and IV lengths are fixed by construction");
    enc.encrypt(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snmp::value::hex;

    const ENGINE: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    #[test]
    fn rfc3414_a3_1_md5_maplesyrup() {
        let ku = AuthProtocol::Md5.password_to_key(b"maplesyrup");
        assert_eq!(hex(&ku), "9faf3283884e92834ebc9847d8edd963");
        let kul = AuthProtocol::Md5.localize(&ku, &ENGINE);
        assert_eq!(hex(&kul), "526f5eed9fcce26f8964c2930787d82b");
    }

    #[test]
    fn rfc3414_a3_2_sha_maplesyrup() {
        let ku = AuthProtocol::Sha1.password_to_key(b"maplesyrup");
        assert_eq!(hex(&ku), "9fb5cc0381497b3793528939ff788d5d79145211");
        let kul = AuthProtocol::Sha1.localize(&ku, &ENGINE);
        assert_eq!(hex(&kul), "6695febc9288e36282235fc7151f128497b38f3f");
    }

    #[test]
    fn blumenthal_extension_appends_hash_of_key() {
        let kul = vec![7u8; 20];
        let k = PrivProtocol::Aes256.fit_key(AuthProtocol::Sha1, kul.clone(), &ENGINE);
        assert_eq!(k.len(), 32);
        assert_eq!(&k[..20], &kul[..]);
        assert_eq!(&k[20..], &AuthProtocol::Sha1.hash(&[&kul])[..12]);
        let k = PrivProtocol::Aes128.fit_key(AuthProtocol::Sha1, kul.clone(), &ENGINE);
        assert_eq!(k, kul[..16].to_vec());
    }

    #[test]
    fn reeder_extension_localizes_the_key_as_a_passphrase() {
        let kul = vec![7u8; 16];
        let k = PrivProtocol::Aes192Reeder.fit_key(AuthProtocol::Md5, kul.clone(), &ENGINE);
        assert_eq!(k.len(), 24);
        assert_eq!(&k[..16], &kul[..]);
        let ku = AuthProtocol::Md5.password_to_key(&kul);
        assert_eq!(&k[16..], &AuthProtocol::Md5.localize(&ku, &ENGINE)[..8]);
        let long = vec![7u8; 32];
        assert_eq!(
            PrivProtocol::Aes256Reeder.fit_key(AuthProtocol::Sha256, long.clone(), &ENGINE),
            long,
            "a long enough key is not extended"
        );
    }

    #[test]
    fn ciphers_round_trip() {
        let key = (0u8..32).collect::<Vec<_>>();
        let salt = [9u8; 8];
        let msg = b"a scoped pdu of 23 byte".to_vec();
        for p in [
            PrivProtocol::Des,
            PrivProtocol::Aes128,
            PrivProtocol::Aes192,
            PrivProtocol::Aes256,
            PrivProtocol::Aes256Reeder,
        ] {
            let ct = p.encrypt(&key, 3, 77, &salt, &msg);
            assert_ne!(ct[..msg.len()], msg[..], "{p:?}");
            let pt = p.decrypt(&key, 3, 77, &salt, &ct).expect("decrypts");
            assert_eq!(&pt[..msg.len()], &msg[..], "{p:?}");
        }
        assert_eq!(PrivProtocol::Des.decrypt(&key, 0, 0, &salt, &[0; 7]), None);
        assert_eq!(
            PrivProtocol::Aes128.decrypt(&key, 0, 0, &[0; 7], &[0; 7]),
            None
        );
    }
}
