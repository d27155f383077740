//! The pure core: no I/O, no AWS types; `now` is always an argument.

pub mod acs;
pub mod context_token;
pub mod grant;
pub mod hosts;
pub mod links;
pub mod notice;
pub mod seal;
