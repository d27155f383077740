//! Which hosts we trust: SharePoint hosts (`SPKEEPER_ALLOWED_SP_HOSTS`) and token-service
//! hosts (`SPKEEPER_STS_HOSTS`). Every URL is parsed with a real URL parser (WHATWG, the
//! `url` crate) and compared on its parsed parts, never by string prefix or suffix.
//!
//! Rules, for both lists:
//! - an entry is `host` (default port only), `host:port` (that port only) or, for SharePoint
//!   hosts, `*.suffix` (any host ending in `.suffix`, default port only, never `suffix` itself);
//! - `https` is required; `http` is accepted only for a loopback host listed explicitly
//!   (dev and tests);
//! - user info (`user@`, `user:pass@`) is refused;
//! - hosts compare exactly after the parser's normalisation (lower case, IDNA, IPv4 forms), so
//!   a trailing dot or a look-alike suffix is refused unless it is itself listed.

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

/// One entry of an allowlist.
#[derive(Clone, PartialEq, Eq)]
enum Rule {
    /// `host` or `host:port`; `port` is `None` for the scheme's default port.
    Exact { host: String, port: Option<u16> },
    /// `*.suffix`, stored with its leading dot: `.sharepoint.com`.
    Suffix(String),
}

/// Why a URL or host was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("not an absolute http(s) URL")]
    NotAUrl,
    #[error("the URL carries user info")]
    UserInfo,
    #[error("the scheme is not allowed for this host")]
    Scheme,
    #[error("the host is not in the allowlist")]
    NotAllowed,
}

/// A parsed allowlist (`SPKEEPER_ALLOWED_SP_HOSTS` or `SPKEEPER_STS_HOSTS`).
#[derive(Clone, PartialEq, Eq)]
pub struct HostAllowlist {
    rules: Vec<Rule>,
}

impl fmt::Debug for HostAllowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(rule_text))
            .finish()
    }
}

fn rule_text(rule: &Rule) -> String {
    match rule {
        Rule::Exact { host, port: None } => host.clone(),
        Rule::Exact {
            host,
            port: Some(p),
        } => format!("{host}:{p}"),
        Rule::Suffix(s) => format!("*{s}"),
    }
}

/// The public ACS hosts (Microsoft's "SharePoint Add-ins in sovereign clouds": worldwide and US
/// Government share `accounts.accesscontrol.windows.net`; China has its own). Microsoft Cloud
/// Deutschland (`login.microsoftonline.de`) was shut down in 2021 and is not trusted.
pub const DEFAULT_STS_HOSTS: &str =
    "accounts.accesscontrol.windows.net,accounts.accesscontrol.chinacloudapi.cn";

/// A SharePoint site URL that passed the allowlist, normalised: no user info, no query,
/// no fragment, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUrl(Url);

impl SiteUrl {
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }

    pub fn url(&self) -> &Url {
        &self.0
    }

    /// `host[:port]` as used in an ACS `resource` and in `/token`'s `host`.
    pub fn authority(&self) -> String {
        authority_of(&self.0)
    }

    /// A URL below the site: `{site}/{relative}`.
    pub fn join(&self, relative: &str) -> String {
        format!("{}/{}", self.as_str(), relative.trim_start_matches('/'))
    }
}

impl fmt::Display for SiteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `host` or `host:port` of a parsed URL (port only when not the default).
pub fn authority_of(url: &Url) -> String {
    let host = match url.host() {
        Some(Host::Ipv6(a)) => format!("[{a}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(a) => IpAddr::V4(*a).is_loopback(),
        Host::Ipv6(a) => IpAddr::V6(*a).is_loopback(),
    }
}

impl HostAllowlist {
    /// Parses a comma-separated list. `allow_wildcards` is false for the STS list.
    pub fn parse(list: &str, allow_wildcards: bool) -> Result<Self, String> {
        let mut rules = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            rules.push(parse_rule(entry, allow_wildcards)?);
        }
        if rules.is_empty() {
            return Err("must list at least one host".into());
        }
        Ok(Self { rules })
    }

    /// Is `host` (already normalised by the URL parser) with `port` (None = default) allowed?
    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        self.rules.iter().any(|rule| match rule {
            Rule::Exact { host: h, port: p } => h == host && *p == port,
            Rule::Suffix(suffix) => {
                port.is_none()
                    && host.strip_suffix(suffix.as_str()).is_some_and(|labels| {
                        !labels.is_empty() && labels.split('.').all(|l| !l.is_empty())
                    })
            }
        })
    }

    /// Is this loopback host listed exactly (the only way `http` is allowed)?
    fn lists_exactly(&self, host: &str, port: Option<u16>) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r, Rule::Exact { host: h, port: p } if h == host && *p == port))
    }

    /// Checks an absolute URL against the list: scheme, user info, host and port.
    pub fn check_url(&self, raw: &str) -> Result<Url, HostError> {
        let url = Url::parse(raw.trim()).map_err(|_| HostError::NotAUrl)?;
        let scheme_ok = matches!(url.scheme(), "https" | "http");
        let host = url.host().ok_or(HostError::NotAUrl)?;
        if !scheme_ok || url.cannot_be_a_base() {
            return Err(HostError::NotAUrl);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HostError::UserInfo);
        }
        let host_text = match &host {
            Host::Ipv6(a) => format!("[{a}]"),
            h => h.to_string(),
        };
        let port = url.port();
        if !self.matches(&host_text, port) {
            return Err(HostError::NotAllowed);
        }
        if url.scheme() == "http" && !(is_loopback(&host) && self.lists_exactly(&host_text, port)) {
            return Err(HostError::Scheme);
        }
        Ok(url)
    }

    /// Checks a SharePoint site URL (`SPHostUrl`, `SPAppWebUrl`) and normalises it.
    pub fn check_site_url(&self, raw: &str) -> Result<SiteUrl, HostError> {
        let mut url = self.check_url(raw)?;
        url.set_query(None);
        url.set_fragment(None);
        let path = url.path().trim_end_matches('/').to_string();
        url.set_path(&path);
        Ok(SiteUrl(url))
    }

    /// The list as origins (`https://host[:port]`, `https://*.suffix`; `http://` for loopback
    /// hosts, which is all `http` is ever allowed for): the Content-Security-Policy sources of
    /// the SharePoint hosts, and where `spkeeper doctor` reaches the token services.
    pub fn origins(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|rule| {
                let text = rule_text(rule);
                let loopback = match rule {
                    Rule::Exact { host, .. } => Url::parse(&format!("http://{host}/"))
                        .ok()
                        .and_then(|u| u.host().map(|h| is_loopback(&h)))
                        .unwrap_or(false),
                    Rule::Suffix(_) => false,
                };
                let scheme = if loopback { "http" } else { "https" };
                format!("{scheme}://{text}")
            })
            .collect()
    }

    /// Checks a bare `host[:port]` (the `host` field of `/token`). Returns it normalised.
    pub fn check_authority(&self, authority: &str) -> Result<String, HostError> {
        let authority = authority.trim();
        if authority.is_empty()
            || authority
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '@' | '?' | '#') || c.is_whitespace())
        {
            return Err(HostError::NotAUrl);
        }
        let url = self.check_url(&format!("https://{authority}/"))?;
        Ok(authority_of(&url))
    }
}

/// A DNS name as the URL parser normalises it: labels of letters, digits and `-` (IDNA already
/// turned into `xn--`), none empty. The parser lets `;`, quotes and the like through; none of
/// them belongs in a host (and they would break the Content-Security-Policy built from the list).
fn is_host_name(d: &str) -> bool {
    !d.is_empty()
        && d.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_rule(entry: &str, allow_wildcards: bool) -> Result<Rule, String> {
    if let Some(suffix) = entry.strip_prefix("*.") {
        if !allow_wildcards {
            return Err(format!("wildcards are not allowed here: {entry}"));
        }
        let url = Url::parse(&format!("https://{suffix}/"))
            .map_err(|_| format!("not a host name: {entry}"))?;
        match url.host() {
            // At least two labels, none empty: `*.com.` is one label and a dot, not a domain.
            Some(Host::Domain(d))
                if url.port().is_none()
                    && url.path() == "/"
                    && is_host_name(d)
                    && d.split('.').count() >= 2 =>
            {
                Ok(Rule::Suffix(format!(".{d}")))
            }
            _ => Err(format!(
                "a wildcard needs a domain of at least two labels and no port: {entry}"
            )),
        }
    } else {
        let url = Url::parse(&format!("https://{entry}/"))
            .map_err(|_| format!("not a host[:port]: {entry}"))?;
        if url.path() != "/" || !url.username().is_empty() || url.host().is_none() {
            return Err(format!("not a host[:port]: {entry}"));
        }
        let host = match url.host() {
            Some(Host::Ipv6(a)) => format!("[{a}]"),
            Some(Host::Domain(d)) if !is_host_name(d.trim_end_matches('.')) => {
                return Err(format!("not a host name: {entry}"));
            }
            Some(h) => h.to_string(),
            None => return Err(format!("not a host[:port]: {entry}")),
        };
        // An explicit ":443" is the default port of https: store it as the default.
        Ok(Rule::Exact {
            host,
            port: url.port(),
        })
    }
}

/// The realm in SharePoint's answer to an anonymous request (PROTOCOL.md §3, "realm
/// discovery"): one of the `WWW-Authenticate` values is `Bearer realm="{GUID}",client_id=…`.
/// Returns the realm in lower case; `None` when no Bearer challenge names a GUID realm.
pub fn realm_from_challenge<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    values.into_iter().find_map(|value| {
        let (scheme, params) = value.trim().split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        params.split(',').find_map(|param| {
            let (name, v) = param.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("realm") {
                return None;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            crate::core::context_token::is_guid(v).then(|| v.to_ascii_lowercase())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> HostAllowlist {
        HostAllowlist::parse(
            "contoso.sharepoint.com, *.fabrikam.com, 127.0.0.1:8080, sp.local:8443",
            true,
        )
        .unwrap()
    }

    #[test]
    fn listed_host_is_allowed_and_normalised() {
        let site = sp()
            .check_site_url("https://Contoso.SharePoint.com/sites/Dev/?x=1#frag")
            .unwrap();
        assert_eq!(site.as_str(), "https://contoso.sharepoint.com/sites/Dev");
        assert_eq!(site.authority(), "contoso.sharepoint.com");
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let l = sp();
        assert!(l.check_url("https://a.fabrikam.com/").is_ok());
        assert!(l.check_url("https://x.y.fabrikam.com/").is_ok());
        assert_eq!(
            l.check_url("https://fabrikam.com/"),
            Err(HostError::NotAllowed)
        );
    }

    #[test]
    fn lookalike_suffixes_are_refused() {
        let l = sp();
        for bad in [
            "https://contoso.sharepoint.com.evil.com/",
            "https://evilcontoso.sharepoint.com/",
            "https://evilfabrikam.com/",
            "https://a.fabrikam.com.evil.net/",
            "https://contoso-sharepoint.com/",
        ] {
            assert_eq!(l.check_url(bad), Err(HostError::NotAllowed), "{bad}");
        }
    }

    #[test]
    fn userinfo_is_refused() {
        let l = sp();
        assert_eq!(
            l.check_url("https://contoso.sharepoint.com@evil.com/"),
            Err(HostError::UserInfo)
        );
        assert_eq!(
            l.check_url("https://evil.com@contoso.sharepoint.com/"),
            Err(HostError::UserInfo)
        );
        assert_eq!(
            l.check_url("https://u:p@contoso.sharepoint.com/"),
            Err(HostError::UserInfo)
        );
    }

    #[test]
    fn backslash_tricks_resolve_to_the_real_host() {
        // WHATWG parsing treats "\" as "/" for special schemes: the host is evil.com.
        assert_eq!(
            sp().check_url("https://evil.com\\@contoso.sharepoint.com/"),
            Err(HostError::NotAllowed)
        );
    }

    #[test]
    fn ports_must_match_the_entry() {
        let l = sp();
        assert_eq!(
            l.check_url("https://contoso.sharepoint.com:8443/"),
            Err(HostError::NotAllowed)
        );
        assert_eq!(
            l.check_url("https://a.fabrikam.com:444/"),
            Err(HostError::NotAllowed)
        );
        assert!(l.check_url("https://sp.local:8443/").is_ok());
        assert_eq!(l.check_url("https://sp.local/"), Err(HostError::NotAllowed));
        // the default port written out is the default port
        assert!(l.check_url("https://contoso.sharepoint.com:443/").is_ok());
    }

    #[test]
    fn schemes_other_than_https_are_refused() {
        let l = sp();
        assert_eq!(
            l.check_url("http://contoso.sharepoint.com/"),
            Err(HostError::Scheme)
        );
        assert_eq!(
            l.check_url("ftp://contoso.sharepoint.com/"),
            Err(HostError::NotAUrl)
        );
        assert_eq!(l.check_url("javascript:alert(1)"), Err(HostError::NotAUrl));
        assert!(l.check_url("http://127.0.0.1:8080/").is_ok());
    }

    #[test]
    fn http_is_refused_for_a_non_loopback_host_even_when_listed() {
        let l = HostAllowlist::parse("sp.example.com:8080", true).unwrap();
        assert_eq!(
            l.check_url("http://sp.example.com:8080/"),
            Err(HostError::Scheme)
        );
    }

    #[test]
    fn trailing_dot_is_refused_unless_listed() {
        let l = sp();
        assert_eq!(
            l.check_url("https://contoso.sharepoint.com./"),
            Err(HostError::NotAllowed)
        );
        assert_eq!(
            l.check_url("https://a.fabrikam.com./"),
            Err(HostError::NotAllowed)
        );
        let dotted = HostAllowlist::parse("contoso.sharepoint.com.", true).unwrap();
        assert!(dotted.check_url("https://contoso.sharepoint.com./").is_ok());
    }

    #[test]
    fn relative_or_garbage_urls_are_not_urls() {
        let l = sp();
        for bad in [
            "",
            "/sites/x",
            "contoso.sharepoint.com",
            "https://",
            "https:///x",
        ] {
            assert!(l.check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bare_authority_is_checked_like_a_url() {
        let l = sp();
        assert_eq!(
            l.check_authority("Contoso.SharePoint.com").unwrap(),
            "contoso.sharepoint.com"
        );
        assert_eq!(
            l.check_authority("127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        for bad in [
            "evil.com",
            "contoso.sharepoint.com/x",
            "user@contoso.sharepoint.com",
            "contoso.sharepoint.com.evil.com",
            "",
            "contoso.sharepoint.com:8443",
        ] {
            assert!(l.check_authority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_must_be_narrow_and_only_where_allowed() {
        assert!(HostAllowlist::parse("*.com", true).is_err());
        assert!(HostAllowlist::parse("*.sharepoint.com:444", true).is_err());
        assert!(HostAllowlist::parse("*.sharepoint.com", false).is_err());
        assert!(HostAllowlist::parse("", true).is_err());
        assert!(HostAllowlist::parse("https://x.com", true).is_err());
        assert!(HostAllowlist::parse("x.com/path", true).is_err());
    }

    #[test]
    fn a_wildcard_of_one_label_and_a_trailing_dot_is_refused() {
        // Found by the hosts fuzz target: `*.com.` passed the two-label rule.
        for bad in ["*.com.", "*.sharepointcom.", "*..com", "*.a..com"] {
            assert!(HostAllowlist::parse(bad, true).is_err(), "{bad}");
        }
        assert!(HostAllowlist::parse("*.sharepoint.com", true).is_ok());
    }

    #[test]
    fn hosts_with_characters_no_host_name_has_are_refused() {
        // Found by the hosts fuzz target: these reached the CSP header unchanged.
        for bad in [
            ";",
            "contoso.sharepoint.com;fabrikam.sharepoint.com",
            "a'b.com",
            "a\"b.com",
            "a`b.com",
            "*.x;y.com",
        ] {
            assert!(HostAllowlist::parse(bad, true).is_err(), "{bad}");
        }
        let ok = HostAllowlist::parse(
            "xn--bcher-kva.example, sp-1.contoso.com:8443, [::1]:8080, 127.0.0.1",
            true,
        )
        .unwrap();
        assert_eq!(ok.origins().len(), 4);
    }

    #[test]
    fn wildcard_refuses_empty_labels() {
        let l = sp();
        for bad in [
            "https://..fabrikam.com/",
            "https://a..fabrikam.com/",
            "https://.a.fabrikam.com/",
        ] {
            // Either the URL parser refuses it or the allowlist does; never allowed.
            assert!(l.check_url(bad).is_err(), "{bad}");
        }
        assert!(l.check_url("https://a.b.fabrikam.com/").is_ok());
    }

    #[test]
    fn microsoft_cloud_deutschland_is_not_a_default_sts() {
        let sts = HostAllowlist::parse(DEFAULT_STS_HOSTS, false).unwrap();
        assert_eq!(
            sts.check_url("https://login.microsoftonline.de/tokens/OAuth/2"),
            Err(HostError::NotAllowed)
        );
        assert!(
            sts.check_url("https://accounts.accesscontrol.chinacloudapi.cn/tokens/OAuth/2")
                .is_ok()
        );
    }

    #[test]
    fn allowlist_gives_its_origins() {
        assert_eq!(
            sp().origins(),
            vec![
                "https://contoso.sharepoint.com",
                "https://*.fabrikam.com",
                "http://127.0.0.1:8080",
                "https://sp.local:8443",
            ]
        );
    }

    #[test]
    fn realm_is_read_from_the_bearer_challenge() {
        let realm = "040F2415-E6E3-4480-96CE-26EF73275F73";
        assert_eq!(
            realm_from_challenge([
                "NTLM",
                &format!(
                    "Bearer realm=\"{realm}\",client_id=\"00000003-0000-0ff1-ce00-000000000000\",trusted_issuers=\"x@*\""
                ),
            ]),
            Some(realm.to_ascii_lowercase())
        );
        assert_eq!(
            realm_from_challenge([format!("bearer  client_id=\"x\", realm={realm}").as_str()]),
            Some(realm.to_ascii_lowercase())
        );
        for bad in [
            "Bearer realm=\"not-a-guid\"",
            "Basic realm=\"040f2415-e6e3-4480-96ce-26ef73275f73\"",
            "Bearer",
            "",
            "Bearer realm=",
        ] {
            assert_eq!(realm_from_challenge([bad]), None, "{bad}");
        }
    }

    #[test]
    fn default_sts_hosts_parse_and_require_https() {
        let sts = HostAllowlist::parse(DEFAULT_STS_HOSTS, false).unwrap();
        assert!(
            sts.check_url("https://accounts.accesscontrol.windows.net/tokens/OAuth/2")
                .is_ok()
        );
        assert_eq!(
            sts.check_url("http://accounts.accesscontrol.windows.net/tokens/OAuth/2"),
            Err(HostError::Scheme)
        );
        assert_eq!(
            sts.check_url("https://evil.accesscontrol.windows.net/"),
            Err(HostError::NotAllowed)
        );
    }
}
