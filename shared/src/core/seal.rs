//! Sealed tokens: AES-256-GCM with the grant id as associated data, under a key ring whose
//! key ids make rotation possible (new tokens are sealed with the active key; any key in the
//! ring opens what it sealed).
//!
//! Format: `v1.{key id}.{base64url(nonce ‖ ciphertext ‖ tag)}`.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;

const NONCE_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed with key {0:?}, which is not in the key ring")]
    UnknownKey(String),
    #[error("sealed value does not open (wrong key, wrong grant, or tampered)")]
    Open,
    #[error("the system random generator failed")]
    Random,
    #[error("key ring: {0}")]
    Ring(String),
}

#[derive(Clone)]
pub struct KeyRing {
    active: String,
    keys: BTreeMap<String, Aes256Gcm>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// `keys`: key id → 32 raw key bytes. `active` must be one of them.
    pub fn new(active: &str, keys: &BTreeMap<String, Vec<u8>>) -> Result<Self, SealError> {
        let mut ring = BTreeMap::new();
        for (id, key) in keys {
            if id.is_empty() || id.contains('.') {
                return Err(SealError::Ring(format!(
                    "key id {id:?} must be non-empty and have no '.'"
                )));
            }
            let cipher = Aes256Gcm::new_from_slice(key)
                .map_err(|_| SealError::Ring(format!("key {id:?} is not 32 bytes")))?;
            ring.insert(id.clone(), cipher);
        }
        if !ring.contains_key(active) {
            return Err(SealError::Ring(format!(
                "active key {active:?} is not in the ring"
            )));
        }
        Ok(KeyRing {
            active: active.to_string(),
            keys: ring,
        })
    }

    /// A ring without keys, for a program that must not seal or open tokens: both fail.
    pub fn empty() -> Self {
        KeyRing {
            active: String::new(),
            keys: BTreeMap::new(),
        }
    }

    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    pub fn seal(&self, plaintext: &[u8], grant_id: &str) -> Result<String, SealError> {
        let cipher = self
            .keys
            .get(&self.active)
            .ok_or_else(|| SealError::UnknownKey(self.active.clone()))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: grant_id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!(
            "v1.{}.{}",
            self.active,
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    pub fn open(&self, sealed: &str, grant_id: &str) -> Result<SecretString, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(kid), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Malformed);
        };
        let cipher = self
            .keys
            .get(kid)
            .ok_or_else(|| SealError::UnknownKey(kid.to_string()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| SealError::Malformed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Malformed)?;
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: grant_id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| SealError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn ring(active: &str) -> KeyRing {
        let mut keys = BTreeMap::new();
        keys.insert("k1".to_string(), vec![1u8; 32]);
        keys.insert("k2".to_string(), vec![2u8; 32]);
        KeyRing::new(active, &keys).unwrap()
    }

    #[test]
    fn sealed_token_opens_only_for_its_grant() {
        let r = ring("k1");
        let s = r.seal(b"refresh-token-value", "grant-a").unwrap();
        assert!(s.starts_with("v1.k1."));
        assert!(!s.contains("refresh-token-value"));
        assert_eq!(
            r.open(&s, "grant-a").unwrap().expose_secret(),
            "refresh-token-value"
        );
        assert_eq!(r.open(&s, "grant-b").unwrap_err(), SealError::Open);
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let r = ring("k1");
        assert_ne!(r.seal(b"x", "g").unwrap(), r.seal(b"x", "g").unwrap());
    }

    #[test]
    fn rotated_ring_still_opens_old_tokens_and_seals_with_the_new_key() {
        let old = ring("k1").seal(b"t", "g").unwrap();
        let r2 = ring("k2");
        assert_eq!(r2.open(&old, "g").unwrap().expose_secret(), "t");
        assert!(r2.seal(b"t", "g").unwrap().starts_with("v1.k2."));
    }

    #[test]
    fn tampered_or_unknown_key_values_do_not_open() {
        let r = ring("k1");
        let s = r.seal(b"t", "g").unwrap();
        let mut bytes = s.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(r.open(&tampered, "g").is_err());
        assert_eq!(
            r.open(&s.replacen("k1", "k9", 1), "g").unwrap_err(),
            SealError::UnknownKey("k9".into())
        );
        assert_eq!(r.open("plain", "g").unwrap_err(), SealError::Malformed);
        assert_eq!(r.open("v1.k1.AAAA", "g").unwrap_err(), SealError::Malformed);
    }

    #[test]
    fn an_empty_ring_neither_seals_nor_opens() {
        let sealed = ring("k1").seal(b"t", "g").unwrap();
        let empty = KeyRing::empty();
        assert!(empty.seal(b"t", "g").is_err());
        assert!(empty.open(&sealed, "g").is_err());
    }

    #[test]
    fn ring_refuses_bad_keys() {
        let mut keys = BTreeMap::new();
        keys.insert("k1".to_string(), vec![1u8; 16]);
        assert!(KeyRing::new("k1", &keys).is_err());
        keys.insert("k1".to_string(), vec![1u8; 32]);
        assert!(KeyRing::new("k2", &keys).is_err());
        keys.insert("a.b".to_string(), vec![1u8; 32]);
        assert!(KeyRing::new("k1", &keys).is_err());
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let printed = format!("{:?}", ring("k1"));
        assert!(printed.contains("k1") && printed.contains("k2"));
        assert!(!printed.contains("1, 1, 1"));
    }
}
