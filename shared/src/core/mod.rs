//! The pure core: no I/O, no AWS types; `now` is always an argument.

pub mod acs;
pub mod context_token;
pub mod entra;
pub mod grant;
pub mod hosts;
pub mod links;
pub mod notice;
pub mod seal;

/// `name=value` pairs of a query string or form body, decoded, in order (duplicates kept: the
/// caller decides which occurrence wins).
pub fn form_pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}
