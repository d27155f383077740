//! Signed renew links, session cookies, and the relaunch URL (PROTOCOL.md §4).
//!
//! Both signatures are HMAC-SHA256 under the link-signing key, each over a message that starts
//! with its own purpose string, so a session cookie can never pass as a renew link or back.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use url::Url;

use super::grant::GrantId;
use super::hosts::SiteUrl;

/// How long a renew link stays valid.
pub const RENEW_LINK_DAYS: i64 = 45;
/// How long a session cookie from a launch stays valid.
pub const SESSION_HOURS: i64 = 12;
/// The session cookie's name. `__Host-`: the browser only accepts it `Secure`, with
/// `Path=/` and no `Domain`, so no sibling subdomain can set or shadow it.
pub const SESSION_COOKIE: &str = "__Host-spkeeper_session";

/// How long a hand-off ticket can be traded for its grant.
pub const TICKET_SECONDS: i64 = 120;

const RENEW_PURPOSE: &str = "spkeeper.renew.v1";
const SESSION_PURPOSE: &str = "spkeeper.session.v1";
const TICKET_PURPOSE: &str = "spkeeper.ticket.v1";
const SIGNIN_PURPOSE: &str = "spkeeper.signin.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link's signature is not valid")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
}

/// A verified hand-off ticket: the grant it is bound to, and its single-use id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub grant: GrantId,
    /// Unique per ticket: marks it used.
    pub id: String,
    pub expires_at: DateTime<Utc>,
}

/// Signs and verifies links and cookies with the link key; during a rotation also verifies
/// with the previous key (`link_key_secondary`), so links already sent stay valid. The keys
/// never print.
#[derive(Clone)]
pub struct LinkSigner {
    /// The key that signs, then the previous one (verifies only).
    keys: Vec<Vec<u8>>,
}

impl fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSigner([redacted])")
    }
}

/// HMAC-SHA256 of `message` under `key`.
fn mac(key: &[u8], message: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message.as_bytes());
    mac
}

/// `{purpose}\n{grant}\n{exp}[\n{extra}]`: what a link or cookie signs.
fn message(purpose: &str, grant: &GrantId, exp: i64, extra: Option<&str>) -> String {
    match extra {
        Some(extra) => format!("{purpose}\n{grant}\n{exp}\n{extra}"),
        None => format!("{purpose}\n{grant}\n{exp}"),
    }
}

impl LinkSigner {
    pub fn new(key: &[u8]) -> Self {
        LinkSigner {
            keys: vec![key.to_vec()],
        }
    }

    /// Signs with `key`; verifies with `key` or `previous` (a rotation's overlap).
    pub fn with_previous(key: &[u8], previous: Option<&[u8]>) -> Self {
        LinkSigner {
            keys: std::iter::once(key)
                .chain(previous)
                .map(<[u8]>::to_vec)
                .collect(),
        }
    }

    /// The signature of `message` by the signing key, base64url.
    fn sign_message(&self, message: &str) -> String {
        let key = self.keys.first().map(Vec::as_slice).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(mac(key, message).finalize().into_bytes())
    }

    /// Is `sig` (base64url) a signature of `message` by one of the keys?
    fn verify_message(&self, message: &str, sig: &str) -> Result<(), LinkError> {
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| LinkError::BadSignature)?;
        if self
            .keys
            .iter()
            .any(|k| mac(k, message).verify_slice(&sig).is_ok())
        {
            Ok(())
        } else {
            Err(LinkError::BadSignature)
        }
    }

    fn sign(&self, purpose: &str, grant: &GrantId, exp: i64, extra: Option<&str>) -> String {
        self.sign_message(&message(purpose, grant, exp, extra))
    }

    fn verify(
        &self,
        purpose: &str,
        (grant, exp, extra): (&GrantId, &str, Option<&str>),
        sig: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, LinkError> {
        let exp_secs: i64 = exp.parse().map_err(|_| LinkError::BadSignature)?;
        if exp.starts_with('+') || exp.starts_with('0') && exp.len() > 1 {
            return Err(LinkError::BadSignature);
        }
        self.verify_message(&message(purpose, grant, exp_secs, extra), sig)?;
        if now.timestamp() >= exp_secs {
            return Err(LinkError::Expired);
        }
        Ok(exp_secs)
    }

    /// `{public_url}/renew/{grant_id}?exp=…&sig=…`, valid for 45 days from `now`.
    pub fn renew_url(&self, public_url: &Url, grant: &GrantId, now: DateTime<Utc>) -> String {
        let exp = (now + Duration::days(RENEW_LINK_DAYS)).timestamp();
        let sig = self.sign(RENEW_PURPOSE, grant, exp, None);
        format!(
            "{}/renew/{grant}?exp={exp}&sig={sig}",
            public_url.as_str().trim_end_matches('/')
        )
    }

    pub fn verify_renew(
        &self,
        grant: &GrantId,
        exp: &str,
        sig: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LinkError> {
        self.verify(RENEW_PURPOSE, (grant, exp, None), sig, now)
            .map(|_| ())
    }

    /// The session cookie's value: `{grant_id}.{exp}.{sig}`.
    pub fn session_value(&self, grant: &GrantId, now: DateTime<Utc>) -> String {
        let exp = (now + Duration::hours(SESSION_HOURS)).timestamp();
        format!(
            "{grant}.{exp}.{}",
            self.sign(SESSION_PURPOSE, grant, exp, None)
        )
    }

    /// The grant a session cookie names, if the cookie is genuine and current.
    pub fn verify_session(&self, value: &str, now: DateTime<Utc>) -> Result<GrantId, LinkError> {
        let mut parts = value.split('.');
        let (Some(g), Some(exp), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LinkError::BadSignature);
        };
        let grant = GrantId::parse(g).ok_or(LinkError::BadSignature)?;
        self.verify(SESSION_PURPOSE, (&grant, exp, None), sig, now)?;
        Ok(grant)
    }

    /// Signs a sign-in's state for its short-lived cookie: `{base64url(payload)}.{exp}.{sig}`.
    pub fn sign_in_cookie(&self, payload: &[u8], exp: i64) -> String {
        let data = URL_SAFE_NO_PAD.encode(payload);
        let sig = self.sign_message(&format!("{SIGNIN_PURPOSE}\n{data}\n{exp}"));
        format!("{data}.{exp}.{sig}")
    }

    /// The payload of a genuine, current sign-in cookie.
    pub fn verify_sign_in_cookie(
        &self,
        value: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>, LinkError> {
        let mut parts = value.split('.');
        let (Some(data), Some(exp), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LinkError::BadSignature);
        };
        let exp_secs: i64 = exp.parse().map_err(|_| LinkError::BadSignature)?;
        self.verify_message(&format!("{SIGNIN_PURPOSE}\n{data}\n{exp}"), sig)?;
        if now.timestamp() >= exp_secs {
            return Err(LinkError::Expired);
        }
        URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| LinkError::BadSignature)
    }

    /// A hand-off ticket for the grant: `{grant_id}.{exp}.{nonce}.{sig}`, valid
    /// [`TICKET_SECONDS`] from `now`. `nonce` (random, from the caller) makes it unique, so it
    /// can be marked used.
    pub fn ticket(&self, grant: &GrantId, nonce: &str, now: DateTime<Utc>) -> String {
        let exp = now.timestamp().saturating_add(TICKET_SECONDS);
        let sig = self.sign(TICKET_PURPOSE, grant, exp, Some(nonce));
        format!("{grant}.{exp}.{nonce}.{sig}")
    }

    /// The grant and id of a genuine, current ticket (whether it was used is the store's to say).
    pub fn verify_ticket(&self, value: &str, now: DateTime<Utc>) -> Result<Ticket, LinkError> {
        let mut parts = value.split('.');
        let (Some(g), Some(exp), Some(nonce), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(LinkError::BadSignature);
        };
        let grant = GrantId::parse(g).ok_or(LinkError::BadSignature)?;
        if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LinkError::BadSignature);
        }
        let exp = self.verify(TICKET_PURPOSE, (&grant, exp, Some(nonce)), sig, now)?;
        Ok(Ticket {
            grant,
            id: nonce.to_ascii_lowercase(),
            expires_at: DateTime::from_timestamp(exp, 0).ok_or(LinkError::BadSignature)?,
        })
    }
}

/// `{launch_url}?{StandardTokens}&SPHasRedirectedToSharePoint=1`, the `redirect_uri` SharePoint
/// expects: it substitutes `{StandardTokens}` itself (Microsoft's SharePointContextProvider
/// builds it the same way; the marker is its loop guard).
pub fn launch_redirect_uri(public_url: &Url) -> String {
    format!(
        "{}/launch?{{StandardTokens}}&SPHasRedirectedToSharePoint=1",
        public_url.as_str().trim_end_matches('/')
    )
}

/// `{SPHostUrl}/_layouts/15/AppRedirect.aspx?client_id=…&redirect_uri=…`.
pub fn relaunch_url(site: &SiteUrl, client_id: &str, public_url: &Url) -> String {
    let mut url = match Url::parse(&site.join("_layouts/15/AppRedirect.aspx")) {
        Ok(u) => u,
        // A SiteUrl is an absolute http(s) URL; joining a fixed path keeps it one.
        Err(_) => return site.join("_layouts/15/AppRedirect.aspx"),
    };
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &launch_redirect_uri(public_url));
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hosts::HostAllowlist;
    use chrono::TimeZone;

    fn signer() -> LinkSigner {
        LinkSigner::new(b"0123456789abcdef0123456789abcdef")
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
    }

    fn gid() -> GrantId {
        GrantId::derive("realm", "key")
    }

    fn parts(link: &str) -> (String, String, String) {
        let u = Url::parse(link).unwrap();
        let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        let g = u.path().rsplit('/').next().unwrap().to_string();
        (g, q["exp"].clone(), q["sig"].clone())
    }

    #[test]
    fn during_a_link_key_rotation_what_either_key_signed_verifies_and_only_the_new_key_signs() {
        let (old_key, new_key) = (
            b"0123456789abcdef0123456789abcdef",
            b"fedcba9876543210fedcba9876543210",
        );
        let old = LinkSigner::new(old_key);
        let overlap = LinkSigner::with_previous(new_key, Some(old_key));
        let after = LinkSigner::new(new_key);
        let public = Url::parse("https://addin.example.com").unwrap();
        let (g, exp, sig) = parts(&old.renew_url(&public, &gid(), now()));
        let g = GrantId::parse(&g).unwrap();
        // Sent before the rotation: valid during the overlap, refused after it.
        assert_eq!(overlap.verify_renew(&g, &exp, &sig, now()), Ok(()));
        assert_eq!(
            after.verify_renew(&g, &exp, &sig, now()),
            Err(LinkError::BadSignature)
        );
        // Signed during the overlap: with the new key, so valid after it too.
        let (_, exp2, sig2) = parts(&overlap.renew_url(&public, &gid(), now()));
        assert_eq!(after.verify_renew(&g, &exp2, &sig2, now()), Ok(()));
        assert_eq!(
            old.verify_renew(&g, &exp2, &sig2, now()),
            Err(LinkError::BadSignature)
        );
        // Sessions, sign-in cookies and tickets alike.
        let session = old.session_value(&gid(), now());
        assert_eq!(overlap.verify_session(&session, now()), Ok(gid()));
        assert!(after.verify_session(&session, now()).is_err());
        let cookie = old.sign_in_cookie(b"state", now().timestamp() + 600);
        assert_eq!(
            overlap.verify_sign_in_cookie(&cookie, now()),
            Ok(b"state".to_vec())
        );
        assert!(after.verify_sign_in_cookie(&cookie, now()).is_err());
        let ticket = old.ticket(&gid(), "ab12", now());
        assert!(overlap.verify_ticket(&ticket, now()).is_ok());
        assert!(after.verify_ticket(&ticket, now()).is_err());
        // A key that is neither is refused.
        let other = LinkSigner::new(b"another-key-another-key-another!");
        let (_, exp3, sig3) = parts(&other.renew_url(&public, &gid(), now()));
        assert_eq!(
            overlap.verify_renew(&g, &exp3, &sig3, now()),
            Err(LinkError::BadSignature)
        );
    }

    /// The README's three steps, with instances at every stage of reading the secret again:
    /// whatever one instance signs, every other one at the same or a neighbouring step
    /// accepts (before step 3, links from before step 2 are still accepted).
    #[test]
    fn the_readme_link_key_rotation_never_refuses_a_link_between_instances() {
        let (old, new) = (
            b"0123456789abcdef0123456789abcdef".as_slice(),
            b"fedcba9876543210fedcba9876543210".as_slice(),
        );
        // What an instance holds at each step of the procedure.
        let steps = [
            LinkSigner::new(old),                      // before
            LinkSigner::with_previous(old, Some(new)), // 1. new key as secondary
            LinkSigner::with_previous(new, Some(old)), // 2. swapped
            LinkSigner::new(new),                      // 3. secondary removed
        ];
        let public = Url::parse("https://addin.example.com").unwrap();
        let g = gid();
        // Instances read the secret within five minutes of each other, and the steps are five
        // minutes apart: two instances are at most one step apart. (Step 3 comes 45 days
        // after step 2, when links signed before it have expired.)
        for (i, signer) in steps.iter().enumerate() {
            let (_, exp, sig) = parts(&signer.renew_url(&public, &g, now()));
            let session = signer.session_value(&g, now());
            let neighbours = steps.iter().enumerate().skip(i.saturating_sub(1)).take(3);
            for (j, other) in neighbours.filter(|(j, _)| j.abs_diff(i) <= 1) {
                assert_eq!(
                    other.verify_renew(&g, &exp, &sig, now()),
                    Ok(()),
                    "signed at step {i}, checked at step {j}"
                );
                assert_eq!(other.verify_session(&session, now()), Ok(g.clone()));
            }
        }
        // The overlap ends at step 3: what the old key signs is refused there.
        let (_, exp, sig) = parts(&steps[0].renew_url(&public, &g, now()));
        assert_eq!(
            steps[3].verify_renew(&g, &exp, &sig, now()),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn renew_link_verifies_until_it_expires_after_45_days() {
        let public = Url::parse("https://addin.example.com").unwrap();
        let link = signer().renew_url(&public, &gid(), now());
        assert!(link.starts_with(&format!("https://addin.example.com/renew/{}?exp=", gid())));
        let (g, exp, sig) = parts(&link);
        assert_eq!(g, gid().as_str());
        let s = signer();
        assert_eq!(
            s.verify_renew(&gid(), &exp, &sig, now() + Duration::days(44)),
            Ok(())
        );
        assert_eq!(
            s.verify_renew(&gid(), &exp, &sig, now() + Duration::days(45)),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn renew_link_with_changed_grant_expiry_or_key_is_refused() {
        let public = Url::parse("https://addin.example.com").unwrap();
        let (_, exp, sig) = parts(&signer().renew_url(&public, &gid(), now()));
        let other = GrantId::derive("realm", "other");
        assert_eq!(
            signer().verify_renew(&other, &exp, &sig, now()),
            Err(LinkError::BadSignature)
        );
        let later = (exp.parse::<i64>().unwrap() + 86400).to_string();
        assert_eq!(
            signer().verify_renew(&gid(), &later, &sig, now()),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer().verify_renew(&gid(), &format!("0{exp}"), &sig, now()),
            Err(LinkError::BadSignature)
        );
        let wrong_key = LinkSigner::new(b"another key entirely.............");
        assert_eq!(
            wrong_key.verify_renew(&gid(), &exp, &sig, now()),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer().verify_renew(&gid(), &exp, "", now()),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer().verify_renew(&gid(), "x", &sig, now()),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn session_cookie_round_trips_and_expires() {
        let v = signer().session_value(&gid(), now());
        assert_eq!(signer().verify_session(&v, now()), Ok(gid()));
        assert_eq!(
            signer().verify_session(&v, now() + Duration::hours(SESSION_HOURS)),
            Err(LinkError::Expired)
        );
        assert!(signer().verify_session("garbage", now()).is_err());
        assert!(signer().verify_session(&format!("{v}x"), now()).is_err());
    }

    #[test]
    fn a_ticket_verifies_for_its_grant_for_120_seconds() {
        let t = signer().ticket(&gid(), "00ff", now());
        let v = signer().verify_ticket(&t, now()).unwrap();
        assert_eq!((v.grant, v.id.as_str()), (gid(), "00ff"));
        assert_eq!(v.expires_at, now() + Duration::seconds(TICKET_SECONDS));
        assert_eq!(
            signer()
                .verify_ticket(&t, now() + Duration::seconds(119))
                .map(|_| ()),
            Ok(())
        );
        assert_eq!(
            signer().verify_ticket(&t, now() + Duration::seconds(120)),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn a_ticket_for_another_grant_or_with_a_changed_part_is_refused() {
        let t = signer().ticket(&gid(), "00ff", now());
        let other = GrantId::derive("realm", "other");
        let swapped = t.replacen(gid().as_str(), other.as_str(), 1);
        assert_eq!(
            signer().verify_ticket(&swapped, now()),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer().verify_ticket(&t.replacen(".00ff.", ".00fe.", 1), now()),
            Err(LinkError::BadSignature)
        );
        // a renew link's or session's signature is not a ticket's
        let session = signer().session_value(&gid(), now());
        let mut p = session.split('.');
        let (g, exp, sig) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        assert_eq!(
            signer().verify_ticket(&format!("{g}.{exp}.00ff.{sig}"), now()),
            Err(LinkError::BadSignature)
        );
        for bad in ["", "x", "a.b.c.d", &format!("{t}.x")] {
            assert!(signer().verify_ticket(bad, now()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_session_cookie_is_not_a_renew_link() {
        let v = signer().session_value(&gid(), now());
        let mut p = v.split('.');
        let (_, exp, sig) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        assert_eq!(
            signer().verify_renew(&gid(), exp, sig, now()),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn relaunch_url_goes_to_the_sites_app_redirect_with_our_launch_url() {
        let site = HostAllowlist::parse("contoso.sharepoint.com", true)
            .unwrap()
            .check_site_url("https://contoso.sharepoint.com/sites/dev/")
            .unwrap();
        let public = Url::parse("https://addin.example.com/").unwrap();
        let url = Url::parse(&relaunch_url(
            &site,
            "a044e184-7de2-4d05-aacf-52118008c44e",
            &public,
        ))
        .unwrap();
        assert_eq!(url.host_str(), Some("contoso.sharepoint.com"));
        assert_eq!(url.path(), "/sites/dev/_layouts/15/AppRedirect.aspx");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], "a044e184-7de2-4d05-aacf-52118008c44e");
        assert_eq!(
            q["redirect_uri"],
            "https://addin.example.com/launch?{StandardTokens}&SPHasRedirectedToSharePoint=1"
        );
    }
}
