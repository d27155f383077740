//! Minting context tokens, for the `--dev` simulator and for tests. Not compiled into the
//! Lambda functions (feature `testkit`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{EncodingKey, Header};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::core::context_token::{ACS_PRINCIPAL, SHAREPOINT_PRINCIPAL, signing_key};

/// Signs `claims` as SharePoint does: HS256 under the client secret's key.
pub fn mint_context_token(claims: &Value, secret: &SecretString) -> String {
    let key = EncodingKey::from_secret(&signing_key(secret));
    jsonwebtoken::encode(&Header::default(), claims, &key).unwrap_or_default()
}

/// Signs any header and claims with an HMAC under `key` (SHA-512 when the header says HS512,
/// else SHA-256): for tokens SharePoint would never send.
pub fn mint_with_header(header: &Value, claims: &Value, key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = if header["alg"] == "HS512" {
        let mut mac = <Hmac<sha2::Sha512> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(input.as_bytes());
        mac.finalize().into_bytes().to_vec()
    } else {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(input.as_bytes());
        mac.finalize().into_bytes().to_vec()
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The claims of a context token as SharePoint issues them.
#[derive(Debug, Clone)]
pub struct ContextTokenSpec {
    pub client_id: String,
    /// `host[:port]` of the add-in's public URL.
    pub audience_host: String,
    pub realm: String,
    pub cache_key: String,
    pub sts_uri: String,
    pub refresh_token: String,
    pub nbf: DateTime<Utc>,
    pub lifetime_hours: i64,
    /// Numbers for `nbf`/`exp`, or strings as in Microsoft's sample.
    pub numeric_dates: bool,
}

impl ContextTokenSpec {
    pub fn claims(&self) -> Value {
        let nbf = self.nbf.timestamp();
        let exp = (self.nbf + Duration::hours(self.lifetime_hours)).timestamp();
        let (nbf, exp) = if self.numeric_dates {
            (json!(nbf), json!(exp))
        } else {
            (json!(nbf.to_string()), json!(exp.to_string()))
        };
        let appctx = json!({
            "CacheKey": self.cache_key,
            "SecurityTokenServiceUri": self.sts_uri,
        })
        .to_string();
        json!({
            "aud": format!("{}/{}@{}", self.client_id, self.audience_host, self.realm),
            "iss": format!("{ACS_PRINCIPAL}@{}", self.realm),
            "nbf": nbf,
            "exp": exp,
            "appctxsender": format!("{SHAREPOINT_PRINCIPAL}@{}", self.realm),
            "appctx": appctx,
            "refreshtoken": self.refresh_token,
            "isbrowserhostedapp": "true",
        })
    }
}
