//! Sealed tokens: AES-256-GCM under a key ring whose key ids make rotation possible (new
//! tokens are sealed with the active key; any key in the ring opens what it sealed).
//!
//! The associated data binds every sealed value to its place: the grant, the purpose (a
//! refresh token or an access token) and what distinguishes it within that purpose (the
//! refresh token's version; the access token's host or scope). A sealed value moved to another
//! grant, another purpose or another version/host fails to open, so someone who can write the
//! store but has no key cannot make `/token` answer with a refresh token, or with another
//! host's access token.
//!
//! Format: `v2.{key id}.{base64url(nonce ‖ ciphertext ‖ tag)}`. The associated data is the
//! length-prefixed fields `spkeeper.seal.v2`, purpose, grant id, binding (no field can bleed
//! into the next). `v1` values (associated data = the grant id alone, before purposes existed)
//! still open, as refresh tokens only, so an upgrade loses no grant; an access token is never
//! read from a `v1` value, and nothing new is sealed as `v1`.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;

const NONCE_LEN: usize = 12;
const FORMAT: &str = "v2";
const LEGACY_FORMAT: &str = "v1";
const AAD_DOMAIN: &str = "spkeeper.seal.v2";

/// Where a sealed value belongs: it opens nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// A grant's refresh token of this version (the grant record's `rt_version`).
    RefreshToken { grant: &'a str, version: i64 },
    /// A cached access token of a grant for this resource (the host, or the scope).
    AccessToken { grant: &'a str, resource: &'a str },
}

impl Place<'_> {
    fn purpose(&self) -> &'static str {
        match self {
            Place::RefreshToken { .. } => "refresh_token",
            Place::AccessToken { .. } => "access_token",
        }
    }

    fn grant(&self) -> &str {
        match self {
            Place::RefreshToken { grant, .. } | Place::AccessToken { grant, .. } => grant,
        }
    }

    /// The associated data: each field preceded by its length (u32, big-endian).
    fn associated_data(&self) -> Vec<u8> {
        let binding = match self {
            Place::RefreshToken { version, .. } => version.to_string(),
            Place::AccessToken { resource, .. } => (*resource).to_string(),
        };
        let mut aad = Vec::new();
        for field in [AAD_DOMAIN, self.purpose(), self.grant(), binding.as_str()] {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
        aad
    }
}

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

    /// Seals `plaintext` for `place` with the active key.
    pub fn seal(&self, plaintext: &[u8], place: &Place<'_>) -> Result<String, SealError> {
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
                    aad: &place.associated_data(),
                },
            )
            .map_err(|_| SealError::Open)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!(
            "{FORMAT}.{}.{}",
            self.active,
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    /// Opens a value sealed for `place`; a value sealed for any other place does not open.
    pub fn open(&self, sealed: &str, place: &Place<'_>) -> Result<SecretString, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(format), Some(kid), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        let aad = match (format, place) {
            (FORMAT, _) => place.associated_data(),
            (LEGACY_FORMAT, Place::RefreshToken { grant, .. }) => grant.as_bytes().to_vec(),
            _ => return Err(SealError::Malformed),
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
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad })
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

    const RT_A: Place<'static> = Place::RefreshToken {
        grant: "grant-a",
        version: 100,
    };

    fn at<'a>(grant: &'a str, resource: &'a str) -> Place<'a> {
        Place::AccessToken { grant, resource }
    }

    /// A v1 value as the previous release sealed it: associated data = the grant id alone.
    fn legacy_seal(r: &KeyRing, plaintext: &[u8], grant: &str) -> String {
        let cipher = r.keys.get("k1").unwrap();
        let nonce = [7u8; NONCE_LEN];
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: grant.as_bytes(),
                },
            )
            .unwrap();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!("v1.k1.{}", URL_SAFE_NO_PAD.encode(blob))
    }

    #[test]
    fn sealed_token_opens_only_for_its_grant() {
        let r = ring("k1");
        let s = r.seal(b"refresh-token-value", &RT_A).unwrap();
        assert!(s.starts_with("v2.k1."));
        assert!(!s.contains("refresh-token-value"));
        assert_eq!(
            r.open(&s, &RT_A).unwrap().expose_secret(),
            "refresh-token-value"
        );
        let other = Place::RefreshToken {
            grant: "grant-b",
            version: 100,
        };
        assert_eq!(r.open(&s, &other).unwrap_err(), SealError::Open);
    }

    #[test]
    fn a_refresh_token_never_opens_as_an_access_token() {
        let r = ring("k1");
        let s = r.seal(b"refresh-token-value", &RT_A).unwrap();
        for resource in ["", "100", "contoso.sharepoint.com"] {
            assert_eq!(
                r.open(&s, &at("grant-a", resource)).unwrap_err(),
                SealError::Open
            );
        }
    }

    #[test]
    fn an_access_token_never_opens_as_a_refresh_token() {
        let r = ring("k1");
        let s = r
            .seal(b"access-token", &at("grant-a", "contoso.sharepoint.com"))
            .unwrap();
        assert_eq!(r.open(&s, &RT_A).unwrap_err(), SealError::Open);
    }

    #[test]
    fn an_older_refresh_token_does_not_open_in_the_newer_ones_place() {
        let r = ring("k1");
        let old = r.seal(b"old", &RT_A).unwrap();
        let newer = Place::RefreshToken {
            grant: "grant-a",
            version: 101,
        };
        assert_eq!(r.open(&old, &newer).unwrap_err(), SealError::Open);
    }

    #[test]
    fn an_access_token_opens_only_for_its_own_host() {
        let r = ring("k1");
        let s = r
            .seal(b"access-token", &at("grant-a", "contoso.sharepoint.com"))
            .unwrap();
        assert_eq!(
            r.open(&s, &at("grant-a", "contoso.sharepoint.com"))
                .unwrap()
                .expose_secret(),
            "access-token"
        );
        assert_eq!(
            r.open(&s, &at("grant-a", "fabrikam.sharepoint.com"))
                .unwrap_err(),
            SealError::Open
        );
        assert_eq!(
            r.open(&s, &at("grant-b", "contoso.sharepoint.com"))
                .unwrap_err(),
            SealError::Open
        );
    }

    #[test]
    fn fields_of_the_associated_data_cannot_bleed_into_each_other() {
        let a = at("ab", "c").associated_data();
        let b = at("a", "bc").associated_data();
        assert_ne!(a, b);
    }

    #[test]
    fn legacy_v1_values_open_as_refresh_tokens_only() {
        let r = ring("k2");
        let v1 = legacy_seal(&r, b"legacy-refresh-token", "grant-a");
        assert_eq!(
            r.open(&v1, &RT_A).unwrap().expose_secret(),
            "legacy-refresh-token"
        );
        assert_eq!(
            r.open(&v1, &at("grant-a", "contoso.sharepoint.com"))
                .unwrap_err(),
            SealError::Malformed
        );
        let other = Place::RefreshToken {
            grant: "grant-b",
            version: 100,
        };
        assert_eq!(r.open(&v1, &other).unwrap_err(), SealError::Open);
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let r = ring("k1");
        assert_ne!(r.seal(b"x", &RT_A).unwrap(), r.seal(b"x", &RT_A).unwrap());
    }

    #[test]
    fn rotated_ring_still_opens_old_tokens_and_seals_with_the_new_key() {
        let old = ring("k1").seal(b"t", &RT_A).unwrap();
        let r2 = ring("k2");
        assert_eq!(r2.open(&old, &RT_A).unwrap().expose_secret(), "t");
        assert!(r2.seal(b"t", &RT_A).unwrap().starts_with("v2.k2."));
    }

    #[test]
    fn tampered_or_unknown_key_values_do_not_open() {
        let r = ring("k1");
        let s = r.seal(b"t", &RT_A).unwrap();
        let mut bytes = s.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(r.open(&tampered, &RT_A).is_err());
        assert_eq!(
            r.open(&s.replacen("k1", "k9", 1), &RT_A).unwrap_err(),
            SealError::UnknownKey("k9".into())
        );
        assert_eq!(r.open("plain", &RT_A).unwrap_err(), SealError::Malformed);
        assert_eq!(
            r.open("v2.k1.AAAA", &RT_A).unwrap_err(),
            SealError::Malformed
        );
        assert_eq!(
            r.open(&s.replacen("v2", "v3", 1), &RT_A).unwrap_err(),
            SealError::Malformed
        );
    }

    #[test]
    fn an_empty_ring_neither_seals_nor_opens() {
        let sealed = ring("k1").seal(b"t", &RT_A).unwrap();
        let empty = KeyRing::empty();
        assert!(empty.seal(b"t", &RT_A).is_err());
        assert!(empty.open(&sealed, &RT_A).is_err());
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
