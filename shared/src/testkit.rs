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

/// moto, the local stand-in for DynamoDB, SQS and Secrets Manager, as the tests use it.
#[cfg(feature = "aws")]
pub mod moto {
    use aws_config::{BehaviorVersion, SdkConfig};
    use aws_sdk_dynamodb::config::{Credentials, Region};

    /// Where the test command started moto.
    pub const URL_VAR: &str = "SPKEEPER_TEST_MOTO_URL";

    /// moto's URL. Tests that need it fail, saying how to run them, when it is not running.
    pub fn url() -> String {
        std::env::var(URL_VAR).unwrap_or_else(|_| {
            panic!("{URL_VAR} is not set: run ./infra/scripts/test, which installs and starts moto for these tests")
        })
    }

    /// An SDK configuration that can only reach moto.
    pub async fn sdk_config() -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(url())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .load()
            .await
    }

    /// A name no other test uses: tests share one moto.
    pub fn unique(prefix: &str) -> String {
        let mut b = [0u8; 6];
        let _ = getrandom::fill(&mut b);
        format!("{prefix}-{}", hex::encode(b))
    }

    /// A fresh table (the project's own definition) and queue; returns (table, queue URL).
    pub async fn fresh(sdk: &SdkConfig, prefix: &str) -> (String, String) {
        let table = unique(&format!("spk-{prefix}"));
        crate::aws::table::create(&aws_sdk_dynamodb::Client::new(sdk), &table)
            .await
            .unwrap_or_else(|e| panic!("creating table {table} in moto: {e:?}"));
        let queue = aws_sdk_sqs::Client::new(sdk)
            .create_queue()
            .queue_name(unique(&format!("spk-{prefix}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating a queue in moto: {e}"));
        (table, queue.queue_url().unwrap_or_default().to_string())
    }

    /// Stores `document` (the secret's JSON) in moto's Secrets Manager; returns its ARN.
    pub async fn create_secret(sdk: &SdkConfig, document: &serde_json::Value) -> String {
        let out = aws_sdk_secretsmanager::Client::new(sdk)
            .create_secret()
            .name(unique("spk-secret"))
            .secret_string(document.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating a secret in moto: {e}"));
        out.arn().unwrap_or_default().to_string()
    }

    /// Receives and deletes every message now on the queue: the bodies.
    pub async fn drain(sdk: &SdkConfig, queue_url: &str) -> Vec<String> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let mut bodies = Vec::new();
        loop {
            let out = sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap_or_else(|e| panic!("receiving from moto: {e}"));
            if out.messages().is_empty() {
                return bodies;
            }
            for m in out.messages() {
                bodies.push(m.body().unwrap_or_default().to_string());
                if let Some(r) = m.receipt_handle() {
                    let _ = sqs
                        .delete_message()
                        .queue_url(queue_url)
                        .receipt_handle(r)
                        .send()
                        .await;
                }
            }
        }
    }
}

/// An RSA signing key as Entra has them: a `kid`, a private key to sign ID tokens (and client
/// assertions) with, and the public half as a JWKS entry. For the `--dev` simulator and tests.
pub mod rsa {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use serde_json::{Value, json};

    pub struct RsaKey {
        pub kid: String,
        /// PKCS#8 PEM of the private key.
        pub private_pem: String,
        /// The JWKS entry of the public key.
        pub jwk: Value,
    }

    impl RsaKey {
        /// A fresh 2048-bit key.
        pub fn generate(kid: &str) -> Result<RsaKey, String> {
            let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|e| e.to_string())?;
            let der = pair.as_der().map_err(|e| e.to_string())?;
            Self::from_parts(kid, der.as_ref(), &pair)
        }

        /// From a PKCS#8 PEM kept earlier (dev.json).
        pub fn from_pem(kid: &str, pem: &str) -> Result<RsaKey, String> {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = STANDARD.decode(body.trim()).map_err(|e| e.to_string())?;
            let pair = KeyPair::from_pkcs8(&der).map_err(|e| e.to_string())?;
            Self::from_parts(kid, &der, &pair)
        }

        fn from_parts(kid: &str, pkcs8: &[u8], pair: &KeyPair) -> Result<RsaKey, String> {
            let b64 = STANDARD.encode(pkcs8);
            let mut private_pem = String::from("-----BEGIN PRIVATE KEY-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                private_pem.push_str(std::str::from_utf8(chunk).map_err(|e| e.to_string())?);
                private_pem.push('\n');
            }
            private_pem.push_str("-----END PRIVATE KEY-----\n");
            let c: PublicKeyComponents<Vec<u8>> = pair.public_key().into();
            Ok(RsaKey {
                kid: kid.to_string(),
                private_pem,
                jwk: json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                    "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e),
                }),
            })
        }

        pub fn encoding_key(&self) -> jsonwebtoken::EncodingKey {
            jsonwebtoken::EncodingKey::from_rsa_pem(self.private_pem.as_bytes())
                .unwrap_or_else(|_| unreachable!("a key this module wrote"))
        }

        /// The public key as a decoding key (to check assertions signed with this key).
        pub fn decoding_key(&self) -> Option<jsonwebtoken::DecodingKey> {
            jsonwebtoken::DecodingKey::from_rsa_components(
                self.jwk["n"].as_str()?,
                self.jwk["e"].as_str()?,
            )
            .ok()
        }

        /// Signs `claims` as an RS256 JWT with this key's `kid`.
        pub fn sign(&self, claims: &Value) -> String {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            h.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&h, claims, &self.encoding_key()).unwrap_or_default()
        }
    }

    /// A JWKS document of these keys.
    pub fn jwks(keys: &[&RsaKey]) -> Value {
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }
}
