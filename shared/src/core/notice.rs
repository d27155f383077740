//! Notices, version 1: the SQS message body and the webhook body are the same JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::grant::{GrantId, Kind, Stage, days_left};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NoticeType {
    #[serde(rename = "refresh_token.expiring")]
    Expiring,
    #[serde(rename = "refresh_token.expired")]
    Expired,
    #[serde(rename = "refresh_token.revoked")]
    Revoked,
    #[serde(rename = "refresh_token.renewed")]
    Renewed,
    #[serde(rename = "client_secret.expiring")]
    ClientSecretExpiring,
    /// ACS is gone for SharePoint Online: the user should sign in with the Entra app, through
    /// the notice's link, which carries their grant over (`spkeeper migrate`).
    #[serde(rename = "grant.migration_required")]
    MigrationRequired,
    /// A connectivity test from `spkeeper doctor`, sent straight to the webhook (never queued):
    /// no grant, no link; receivers verify its signature, answer 2xx and do nothing else.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl NoticeType {
    /// Every type the sweep and the commands queue (what a sweep's summary counts);
    /// `webhook.test` is not one of them: it never goes through the queue.
    pub const QUEUED: [NoticeType; 6] = [
        NoticeType::Expiring,
        NoticeType::Expired,
        NoticeType::Revoked,
        NoticeType::Renewed,
        NoticeType::ClientSecretExpiring,
        NoticeType::MigrationRequired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeType::Expiring => "refresh_token.expiring",
            NoticeType::Expired => "refresh_token.expired",
            NoticeType::Revoked => "refresh_token.revoked",
            NoticeType::Renewed => "refresh_token.renewed",
            NoticeType::ClientSecretExpiring => "client_secret.expiring",
            NoticeType::MigrationRequired => "grant.migration_required",
            NoticeType::WebhookTest => "webhook.test",
        }
    }
}

impl From<Stage> for NoticeType {
    fn from(s: Stage) -> Self {
        match s {
            Stage::Expiring(_) => NoticeType::Expiring,
            Stage::Expired => NoticeType::Expired,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub title: String,
    pub email: String,
    pub login_name: String,
    /// An Entra user's object id in the tenant (with the tenant id, who the user is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeGrant {
    pub id: GrantId,
    /// `acs` or `entra` (added to version 1; absent in notices queued before kinds existed).
    #[serde(default = "acs")]
    pub kind: Kind,
    pub realm: String,
    /// An Entra grant's tenant id (the same as `realm`), for consumers that think in Entra terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub site_url: String,
    pub user: Option<User>,
}

fn acs() -> Kind {
    Kind::Acs
}

/// A notice. Field order and names are the contract's; fields that do not apply to a type
/// are `null` (a `client_secret.expiring` notice has no grant and no renew link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub version: u32,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: NoticeType,
    pub created_at: String,
    pub grant: Option<NoticeGrant>,
    pub refresh_token_expires_at: Option<String>,
    pub days_left: i64,
    pub renew_url: Option<String>,
    /// Only on `client_secret.expiring`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_secret_expires_at: Option<String>,
    /// Only on `refresh_token.revoked`: why (`inactive`, `revoked`, `sign_in_frequency`,
    /// `mfa_required`, `consent`, `user_disabled`, `blocked`, `other`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Only on `refresh_token.revoked`: the AADSTS number, or null.
    #[serde(
        skip_serializing_if = "is_not_revoked_code",
        default,
        rename = "error_code"
    )]
    pub error_code: RevokedCode,
    /// Only on the `refresh_token.renewed` that carried an ACS grant over to Entra: `acs`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migrated_from: Option<String>,
}

/// `error_code` of a `revoked` notice: present (a number or null) only on that type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RevokedCode {
    #[default]
    Absent,
    Code(Option<u32>),
}

fn is_not_revoked_code(c: &RevokedCode) -> bool {
    *c == RevokedCode::Absent
}

impl Serialize for RevokedCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RevokedCode::Code(Some(c)) => s.serialize_u32(*c),
            _ => s.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for RevokedCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RevokedCode::Code(Option::<u32>::deserialize(d)?))
    }
}

/// RFC 3339 in UTC with a `Z` and whole seconds, as every time in the contract.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Deterministic notice id: the same notice always gets the same id, so consumers can dedupe.
pub fn notice_id(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("\n").as_bytes());
    format!("ntc_{}", hex::encode(&digest[..16]))
}

/// Everything about the grant a notice needs.
pub struct NoticeSubject<'a> {
    pub grant: NoticeGrant,
    /// The refresh-token version the notice is about (`nbf`, epoch seconds).
    pub rt_version: i64,
    pub rt_expires_at: DateTime<Utc>,
    pub renew_url: &'a str,
}

impl Notice {
    /// A notice about a grant's refresh token.
    pub fn about_grant(
        kind: NoticeType,
        stage_days: Option<u32>,
        s: NoticeSubject<'_>,
        now: DateTime<Utc>,
    ) -> Self {
        let version = s.rt_version.to_string();
        let day_part = stage_days.map(|d| d.to_string()).unwrap_or_default();
        let id = notice_id(&[s.grant.id.as_str(), &version, kind.as_str(), &day_part]);
        Notice {
            version: 1,
            id,
            kind,
            created_at: rfc3339(now),
            grant: Some(s.grant),
            refresh_token_expires_at: Some(rfc3339(s.rt_expires_at)),
            days_left: days_left(s.rt_expires_at, now),
            renew_url: Some(s.renew_url.to_string()),
            client_secret_expires_at: None,
            reason: None,
            error_code: RevokedCode::Absent,
            migrated_from: None,
        }
    }

    /// `refresh_token.revoked`, with why (ENTRA.md §5's reason and the AADSTS code).
    pub fn revoked(
        reason: &str,
        error_code: Option<u32>,
        s: NoticeSubject<'_>,
        now: DateTime<Utc>,
    ) -> Self {
        Notice {
            reason: Some(reason.to_string()),
            error_code: RevokedCode::Code(error_code),
            ..Self::about_grant(NoticeType::Revoked, None, s, now)
        }
    }

    /// The sweep's notice for a stage.
    pub fn for_stage(stage: Stage, s: NoticeSubject<'_>, now: DateTime<Utc>) -> Self {
        let days = match stage {
            Stage::Expiring(d) => Some(d),
            Stage::Expired => None,
        };
        Self::about_grant(stage.into(), days, s, now)
    }

    /// The operators' warning that the client secret expires soon (once per expiry date).
    pub fn client_secret_expiring(
        client_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        let when = rfc3339(expires_at);
        Notice {
            version: 1,
            id: notice_id(&[client_id, &when, NoticeType::ClientSecretExpiring.as_str()]),
            kind: NoticeType::ClientSecretExpiring,
            created_at: rfc3339(now),
            grant: None,
            refresh_token_expires_at: None,
            days_left: days_left(expires_at, now),
            renew_url: None,
            client_secret_expires_at: Some(when),
            reason: None,
            error_code: RevokedCode::Absent,
            migrated_from: None,
        }
    }

    /// `webhook.test`: what `spkeeper doctor` sends to check the webhook. Like
    /// `client_secret.expiring` it is about no grant (`grant`, `refresh_token_expires_at` and
    /// `renew_url` are null); `nonce` makes each test its own notice, with its own id.
    pub fn webhook_test(nonce: &str, now: DateTime<Utc>) -> Self {
        let created_at = rfc3339(now);
        Notice {
            version: 1,
            id: notice_id(&[NoticeType::WebhookTest.as_str(), &created_at, nonce]),
            kind: NoticeType::WebhookTest,
            created_at,
            grant: None,
            refresh_token_expires_at: None,
            days_left: 0,
            renew_url: None,
            client_secret_expires_at: None,
            reason: None,
            error_code: RevokedCode::Absent,
            migrated_from: None,
        }
    }

    /// The notice as its webhook body (and SQS message body). U+FFFE and U+FFFF, which JSON
    /// allows in strings but SQS refuses in a message, are written as `\uFFFE` and `\uFFFF`:
    /// the same JSON to every parser, and no name from outside (a user's title, a site URL)
    /// can make the delivery queue refuse a notice.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        if !json.contains(['\u{FFFE}', '\u{FFFF}']) {
            return json;
        }
        // Outside strings a JSON text is ASCII, so these only occur inside strings.
        json.replace('\u{FFFE}', "\\uFFFE")
            .replace('\u{FFFF}', "\\uFFFF")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use serde_json::Value;

    fn subject() -> NoticeSubject<'static> {
        NoticeSubject {
            grant: NoticeGrant {
                id: GrantId::derive("r", "k"),
                kind: Kind::Acs,
                tenant_id: None,
                realm: "r".into(),
                site_url: "https://contoso.sharepoint.com/sites/a".into(),
                user: None,
            },
            rt_version: 1_700_000_000,
            rt_expires_at: Utc.with_ymd_and_hms(2026, 7, 15, 0, 0, 0).unwrap(),
            renew_url: "https://addin.example.com/renew/x?exp=1&sig=y",
        }
    }

    #[test]
    fn notice_has_the_contract_shape() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 0, 0, 0).unwrap();
        let n = Notice::for_stage(Stage::Expiring(30), subject(), now);
        let v: Value = serde_json::from_str(&n.to_json()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["type"], "refresh_token.expiring");
        assert_eq!(v["created_at"], "2026-06-15T00:00:00Z");
        assert_eq!(v["refresh_token_expires_at"], "2026-07-15T00:00:00Z");
        assert_eq!(v["days_left"], 30);
        assert_eq!(
            v["grant"]["site_url"],
            "https://contoso.sharepoint.com/sites/a"
        );
        assert!(v["grant"]["user"].is_null());
        assert!(v["renew_url"].as_str().unwrap().contains("/renew/"));
        assert!(v.get("client_secret_expires_at").is_none());
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "version",
            "id",
            "type",
            "created_at",
            "grant",
            "refresh_token_expires_at",
            "days_left",
            "renew_url",
        ] {
            assert!(keys.contains(&k), "{k}");
        }
    }

    /// SQS takes #x9, #xA, #xD, #x20–#xD7FF, #xE000–#xFFFD and #x10000–#x10FFFF in a message.
    fn sqs_takes(c: char) -> bool {
        matches!(u32::from(c), 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
    }

    #[test]
    fn a_notice_body_holds_only_characters_sqs_takes_whatever_the_names_in_it() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 0, 0, 0).unwrap();
        let title = "Ann\u{FFFE}\u{FFFF}\u{0}\u{1F}\u{7F}\u{D7FF}\u{E000}\u{10FFFF} \"x\"";
        let mut subject = subject();
        subject.grant.user = Some(User {
            title: title.into(),
            email: "ann@contoso.com\u{FFFE}".into(),
            login_name: "i:0#.f|membership|ann@contoso.com".into(),
            oid: None,
        });
        let body = Notice::for_stage(Stage::Expiring(30), subject, now).to_json();
        let refused: Vec<char> = body.chars().filter(|c| !sqs_takes(*c)).collect();
        assert!(refused.is_empty(), "{refused:?}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["grant"]["user"]["title"], title, "the same text, escaped");
        assert_eq!(v["grant"]["user"]["email"], "ann@contoso.com\u{FFFE}");
    }

    #[test]
    fn the_same_notice_always_has_the_same_id() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 0, 0, 0).unwrap();
        let a = Notice::for_stage(Stage::Expiring(7), subject(), now);
        let b = Notice::for_stage(Stage::Expiring(7), subject(), now + Duration::hours(3));
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("ntc_"));
        let other_stage = Notice::for_stage(Stage::Expiring(1), subject(), now);
        let expired = Notice::for_stage(Stage::Expired, subject(), now);
        assert_ne!(a.id, other_stage.id);
        assert_ne!(a.id, expired.id);
        let mut newer = subject();
        newer.rt_version += 1;
        assert_ne!(a.id, Notice::for_stage(Stage::Expiring(7), newer, now).id);
    }

    #[test]
    fn a_webhook_test_is_about_nothing_and_each_is_its_own_notice() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 0, 0, 0).unwrap();
        let n = Notice::webhook_test("a1", now);
        let v: Value = serde_json::from_str(&n.to_json()).unwrap();
        assert_eq!(v["type"], "webhook.test");
        assert_eq!(v["version"], 1);
        for field in ["grant", "refresh_token_expires_at", "renew_url"] {
            assert!(v[field].is_null(), "{field}");
        }
        assert_eq!(v["days_left"], 0);
        assert!(v.get("client_secret_expires_at").is_none());
        assert_ne!(n.id, Notice::webhook_test("a2", now).id);
        assert!(!NoticeType::QUEUED.contains(&NoticeType::WebhookTest));
    }

    #[test]
    fn client_secret_notice_has_no_grant_and_its_own_expiry() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 0, 0, 0).unwrap();
        let exp = now + Duration::days(30);
        let n = Notice::client_secret_expiring("cid", exp, now);
        let v: Value = serde_json::from_str(&n.to_json()).unwrap();
        assert_eq!(v["type"], "client_secret.expiring");
        assert!(v["grant"].is_null());
        assert_eq!(v["days_left"], 30);
        assert_eq!(v["client_secret_expires_at"], "2026-07-15T00:00:00Z");
        assert_eq!(
            n.id,
            Notice::client_secret_expiring("cid", exp, now + Duration::days(2)).id
        );
    }
}
