//! The grant lifecycle, pure: identity, refresh-token expiry, status, which notice is due.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Months, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long ACS honours a refresh token: six calendar months from the context token's `nbf`.
pub const REFRESH_TOKEN_MONTHS: u32 = 6;
/// How long relaunch details outlive the refresh token.
pub const RELAUNCH_RETENTION_DAYS: i64 = 180;

/// Where a grant's refresh token comes from, and so how it lives and dies (ARCHITECTURE.md,
/// "Two kinds of grant, one lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A SharePoint add-in launch: a context token from ACS; six months, never renewed on use.
    Acs,
    /// An Entra ID sign-in: 90 idle days, a new refresh token at every redemption.
    Entra,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Acs => "acs",
            Kind::Entra => "entra",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "acs" => Ok(Kind::Acs),
            "entra" => Ok(Kind::Entra),
            _ => Err(format!("unknown grant kind {s:?}")),
        }
    }
}

/// `grant_id` = lowercase hex of the first 16 bytes of SHA-256 over `{realm}\n{CacheKey}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GrantId(String);

impl GrantId {
    pub fn derive(realm: &str, cache_key: &str) -> Self {
        let digest = Sha256::digest(format!("{realm}\n{cache_key}").as_bytes());
        GrantId(hex::encode(&digest[..16]))
    }

    /// An Entra grant's id: the first 16 bytes of SHA-256 over `entra\n{tid}\n{oid}`.
    pub fn entra(tid: &str, oid: &str) -> Self {
        let digest = Sha256::digest(format!("entra\n{tid}\n{oid}").as_bytes());
        GrantId(hex::encode(&digest[..16]))
    }

    /// Accepts exactly 32 lowercase hex digits: the only shape a grant id has.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| GrantId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GrantId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        GrantId::parse(&s).ok_or_else(|| "not a grant id".to_string())
    }
}

impl From<GrantId> for String {
    fn from(g: GrantId) -> String {
        g.0
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantId({})", self.0)
    }
}

/// Refresh-token expiry: `nbf` + six calendar months (clamped to the month's end, so
/// 31 August + 6 months = 28/29 February).
pub fn refresh_token_expiry(nbf: DateTime<Utc>) -> DateTime<Utc> {
    nbf.checked_add_months(Months::new(REFRESH_TOKEN_MONTHS))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Until when relaunch details are kept.
pub fn relaunch_retention(rt_expires_at: DateTime<Utc>) -> DateTime<Utc> {
    plus_days(rt_expires_at, RELAUNCH_RETENTION_DAYS)
}

/// `t` + `days`, saturating at the ends of the calendar (stored times come from outside:
/// date arithmetic never panics).
pub fn plus_days(t: DateTime<Utc>, days: i64) -> DateTime<Utc> {
    let fallback = if days < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    };
    Duration::try_days(days)
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(fallback)
}

/// Whole days left, rounded up (a token with 29.5 days left has "30 days left"), never negative.
pub fn days_left(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let secs = (expires_at - now).num_seconds();
    if secs <= 0 {
        0
    } else {
        (secs + 86_399) / 86_400
    }
}

/// `SPKEEPER_NOTICE_DAYS`: distinct days before expiry, largest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeDays(Vec<u32>);

impl NoticeDays {
    pub fn new(mut days: Vec<u32>) -> Result<Self, String> {
        if days.is_empty() {
            return Err("must list at least one day".into());
        }
        if let Some(d) = days.iter().find(|d| **d == 0 || **d > 180) {
            return Err(format!("{d} is not between 1 and 180"));
        }
        days.sort_unstable_by(|a, b| b.cmp(a));
        days.dedup();
        Ok(NoticeDays(days))
    }

    pub fn parse(list: &str) -> Result<Self, String> {
        let days = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>()
                    .map_err(|_| format!("{s:?} is not a number of days"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(days)
    }

    pub fn days(&self) -> &[u32] {
        &self.0
    }

    pub fn largest(&self) -> u32 {
        self.0.first().copied().unwrap_or(30)
    }
}

impl Default for NoticeDays {
    fn default() -> Self {
        NoticeDays(vec![30, 7, 1])
    }
}

/// What has been told about the current refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing yet.
    None,
    /// The `expiring` notice for this many days before expiry was the last one sent.
    Expiring(u32),
    /// `expired` was sent: nothing more until a relaunch.
    Expired,
    /// `revoked` was sent (ACS said `invalid_grant`): nothing more until a relaunch.
    Revoked,
}

impl Progress {
    /// A notice went out for this refresh token: a relaunch deserves an all-clear.
    pub fn any_notice_sent(self) -> bool {
        self != Progress::None
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::None => f.write_str("none"),
            Progress::Expiring(d) => write!(f, "expiring:{d}"),
            Progress::Expired => f.write_str("expired"),
            Progress::Revoked => f.write_str("revoked"),
        }
    }
}

impl FromStr for Progress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Progress::None),
            "expired" => Ok(Progress::Expired),
            "revoked" => Ok(Progress::Revoked),
            _ => s
                .strip_prefix("expiring:")
                .and_then(|d| d.parse().ok())
                .map(Progress::Expiring)
                .ok_or_else(|| format!("unknown notice progress {s:?}")),
        }
    }
}

/// A grant's status as users and apps see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Expiring,
    Expired,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Expiring => "expiring",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
        }
    }

    /// The refresh token can no longer be exchanged: the user must relaunch.
    pub fn needs_relaunch(self) -> bool {
        matches!(self, Status::Expired | Status::Revoked)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn status(
    expires_at: DateTime<Utc>,
    progress: Progress,
    now: DateTime<Utc>,
    days: &NoticeDays,
) -> Status {
    if progress == Progress::Revoked {
        Status::Revoked
    } else if now >= expires_at {
        Status::Expired
    } else if now >= plus_days(expires_at, -i64::from(days.largest())) {
        Status::Expiring
    } else {
        Status::Active
    }
}

/// A notice the sweep may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Expiring(u32),
    Expired,
}

impl Stage {
    /// The progress after this stage's notice is sent.
    pub fn progress(self) -> Progress {
        match self {
            Stage::Expiring(d) => Progress::Expiring(d),
            Stage::Expired => Progress::Expired,
        }
    }
}

fn stage_time(expires_at: DateTime<Utc>, stage: Stage) -> DateTime<Utc> {
    match stage {
        Stage::Expiring(d) => plus_days(expires_at, -i64::from(d)),
        Stage::Expired => expires_at,
    }
}

/// The stages still to come after `progress`, earliest first.
fn remaining_stages(progress: Progress, days: &NoticeDays) -> impl Iterator<Item = Stage> + '_ {
    let (last_day, done) = match progress {
        Progress::None => (u32::MAX, false),
        Progress::Expiring(d) => (d, false),
        Progress::Expired | Progress::Revoked => (0, true),
    };
    days.days()
        .iter()
        .copied()
        .filter(move |d| !done && *d < last_day)
        .map(Stage::Expiring)
        .chain((!done).then_some(Stage::Expired))
}

/// The notice due at `now`, if any. A sweep that runs late sends only the nearest due stage
/// (the latest one whose time has come), never a burst of all the missed ones.
pub fn due_stage(
    expires_at: DateTime<Utc>,
    progress: Progress,
    now: DateTime<Utc>,
    days: &NoticeDays,
) -> Option<Stage> {
    remaining_stages(progress, days)
        .take_while(|s| stage_time(expires_at, *s) <= now)
        .last()
}

/// When the next notice falls due after `progress` (the sweep's index key); `None` when
/// nothing more will be sent for this refresh token.
pub fn next_due_at(
    expires_at: DateTime<Utc>,
    progress: Progress,
    days: &NoticeDays,
) -> Option<DateTime<Utc>> {
    remaining_stages(progress, days)
        .next()
        .map(|s| stage_time(expires_at, s))
}

/// When an Entra grant is due for its keep-alive redemption: `keepalive_days` after its last
/// redemption (its refresh token dies 90 days after that: `expires_at`).
pub fn keepalive_due(expires_at: DateTime<Utc>, keepalive_days: u32) -> DateTime<Utc> {
    plus_days(
        expires_at,
        -(crate::core::entra::INACTIVITY_DAYS - i64::from(keepalive_days)),
    )
}

/// When the sweep should next look at a grant of this kind: the next notice stage, and for an
/// Entra grant kept alive (`keepalive_days` > 0) its keep-alive redemption, whichever is first.
pub fn next_check(
    kind: Kind,
    expires_at: DateTime<Utc>,
    progress: Progress,
    days: &NoticeDays,
    keepalive_days: u32,
) -> Option<DateTime<Utc>> {
    let stage = next_due_at(expires_at, progress, days);
    let alive = !matches!(progress, Progress::Expired | Progress::Revoked);
    match kind {
        Kind::Entra if keepalive_days > 0 && alive => {
            let k = keepalive_due(expires_at, keepalive_days);
            Some(stage.map_or(k, |s| s.min(k)))
        }
        _ => stage,
    }
}

/// Is an Entra grant's keep-alive redemption due at `now`?
pub fn keepalive_is_due(
    expires_at: DateTime<Utc>,
    progress: Progress,
    now: DateTime<Utc>,
    keepalive_days: u32,
) -> bool {
    keepalive_days > 0
        && !matches!(progress, Progress::Expired | Progress::Revoked)
        && now < expires_at
        && now >= keepalive_due(expires_at, keepalive_days)
}

/// What a launch does to the grant it lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchPlan {
    /// No grant yet.
    Create,
    /// A newer refresh token: replace it, reset the notices, and send `renewed` if a notice
    /// had gone out for the old one.
    Replace { renewed: bool },
    /// The same refresh-token version (same `nbf`): keep the notice progress.
    Refresh,
    /// An older context token than the one stored: keep the newer refresh token.
    Stale,
}

/// `stored` is the stored refresh-token version (`nbf`, epoch seconds) and its progress.
pub fn plan_launch(stored: Option<(i64, Progress)>, incoming_version: i64) -> LaunchPlan {
    match stored {
        None => LaunchPlan::Create,
        Some((v, _)) if incoming_version < v => LaunchPlan::Stale,
        Some((v, _)) if incoming_version == v => LaunchPlan::Refresh,
        Some((_, progress)) => LaunchPlan::Replace {
            renewed: progress.any_notice_sent(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    fn days(n: i64) -> Duration {
        Duration::days(n)
    }

    #[test]
    fn an_entra_grant_kept_alive_is_due_for_its_redemption_before_any_notice() {
        let d = NoticeDays::default();
        let last = t(2026, 1, 1);
        let exp = last + days(90);
        // keep-alive after 30 idle days, long before the 30-day notice (60 days in)
        assert_eq!(
            next_check(Kind::Entra, exp, Progress::None, &d, 30),
            Some(last + days(30))
        );
        assert!(!keepalive_is_due(exp, Progress::None, last + days(29), 30));
        assert!(keepalive_is_due(exp, Progress::None, last + days(30), 30));
        assert!(!keepalive_is_due(
            exp,
            Progress::Revoked,
            last + days(31),
            30
        ));
        assert!(
            !keepalive_is_due(exp, Progress::None, exp, 30),
            "too late: it is dead"
        );
        // keep-alive off: the stages before the 90-day mark, as for ACS
        assert_eq!(
            next_check(Kind::Entra, exp, Progress::None, &d, 0),
            Some(exp - days(30))
        );
        assert!(!keepalive_is_due(exp, Progress::None, last + days(89), 0));
        // a keep-alive later than the first stage gives way to it
        assert_eq!(
            next_check(Kind::Entra, exp, Progress::None, &d, 80),
            Some(exp - days(30))
        );
        // and ACS grants never keep alive
        assert_eq!(
            next_check(Kind::Acs, exp, Progress::None, &d, 30),
            Some(exp - days(30))
        );
        assert_eq!(
            next_check(Kind::Entra, exp, Progress::Revoked, &d, 30),
            None
        );
    }

    #[test]
    fn date_arithmetic_at_the_ends_of_the_calendar_saturates_instead_of_panicking() {
        let max = DateTime::<Utc>::MAX_UTC;
        let min = DateTime::<Utc>::MIN_UTC;
        assert_eq!(relaunch_retention(max), max);
        assert_eq!(plus_days(min, -30), min);
        assert_eq!(refresh_token_expiry(max), max);
        let d = NoticeDays::default();
        assert_eq!(
            status(min, Progress::None, t(2026, 1, 1), &d),
            Status::Expired
        );
        assert_eq!(
            status(max, Progress::None, t(2026, 1, 1), &d),
            Status::Active
        );
        let _ = next_due_at(min, Progress::None, &d);
        let _ = next_due_at(max, Progress::None, &d);
        let _ = due_stage(min, Progress::None, t(2026, 1, 1), &d);
        assert_eq!(days_left(max, min), days_left(max, min));
    }

    #[test]
    fn grant_id_is_sha256_of_realm_and_cache_key_truncated_to_16_bytes() {
        let id = GrantId::derive(
            "040f2415-e6e3-4480-96ce-26ef73275f73",
            "KQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=",
        );
        // printf '040f2415-e6e3-4480-96ce-26ef73275f73\nKQAIUpDUD0sm5Tr83U+jZGYVuPPCPu8BGwoWiAACqNw=' | sha256sum | cut -c1-32
        assert_eq!(id.as_str(), "0bc3e56ceaac1988d0860fb6536c9073");
        assert_eq!(id.as_str().len(), 32);
    }

    #[test]
    fn grant_id_parse_accepts_only_lowercase_hex_of_32() {
        assert!(GrantId::parse("0bc3e56ceaac1988d0860fb6536c9073").is_some());
        for bad in [
            "",
            "9F73D7CB1EA2ED2E8D3C2F8E60B77B18",
            "9f73d7cb1ea2ed2e8d3c2f8e60b77b1",
            "0bc3e56ceaac1988d0860fb6536c9073a",
            "../../../../etc/passwd/aaaaaaaaa",
        ] {
            assert!(GrantId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn refresh_token_expires_six_calendar_months_after_nbf() {
        assert_eq!(refresh_token_expiry(t(2026, 1, 15)), t(2026, 7, 15));
        assert_eq!(refresh_token_expiry(t(2026, 8, 31)), t(2027, 2, 28));
        assert_eq!(refresh_token_expiry(t(2027, 8, 31)), t(2028, 2, 29));
        assert_eq!(refresh_token_expiry(t(2026, 12, 31)), t(2027, 6, 30));
    }

    #[test]
    fn relaunch_details_outlive_the_refresh_token_by_180_days() {
        assert_eq!(relaunch_retention(t(2026, 1, 1)), t(2026, 1, 1) + days(180));
    }

    #[test]
    fn days_left_rounds_up_and_stops_at_zero() {
        let exp = t(2026, 7, 15);
        assert_eq!(days_left(exp, exp - days(30)), 30);
        assert_eq!(days_left(exp, exp - days(30) + Duration::hours(12)), 30);
        assert_eq!(days_left(exp, exp - Duration::seconds(1)), 1);
        assert_eq!(days_left(exp, exp), 0);
        assert_eq!(days_left(exp, exp + days(3)), 0);
    }

    #[test]
    fn notice_days_are_validated_sorted_and_deduplicated() {
        assert_eq!(NoticeDays::parse("1, 30,7,7").unwrap().days(), &[30, 7, 1]);
        assert!(NoticeDays::parse("").is_err());
        assert!(NoticeDays::parse("0").is_err());
        assert!(NoticeDays::parse("181").is_err());
        assert!(NoticeDays::parse("x").is_err());
        assert_eq!(NoticeDays::default().days(), &[30, 7, 1]);
    }

    #[test]
    fn progress_round_trips_through_text() {
        for p in [
            Progress::None,
            Progress::Expiring(30),
            Progress::Expiring(1),
            Progress::Expired,
            Progress::Revoked,
        ] {
            assert_eq!(p.to_string().parse::<Progress>().unwrap(), p);
        }
        assert!("expiring:x".parse::<Progress>().is_err());
        assert!("bogus".parse::<Progress>().is_err());
    }

    #[test]
    fn status_follows_expiry_and_revocation() {
        let exp = t(2026, 7, 15);
        let d = NoticeDays::default();
        assert_eq!(
            status(exp, Progress::None, exp - days(31), &d),
            Status::Active
        );
        assert_eq!(
            status(exp, Progress::None, exp - days(30), &d),
            Status::Expiring
        );
        assert_eq!(
            status(exp, Progress::Expiring(30), exp - days(2), &d),
            Status::Expiring
        );
        assert_eq!(status(exp, Progress::Expiring(1), exp, &d), Status::Expired);
        assert_eq!(
            status(exp, Progress::Revoked, exp - days(90), &d),
            Status::Revoked
        );
        assert!(Status::Expired.needs_relaunch() && Status::Revoked.needs_relaunch());
        assert!(!Status::Expiring.needs_relaunch());
    }

    #[test]
    fn each_stage_falls_due_at_its_day() {
        let exp = t(2026, 7, 15);
        let d = NoticeDays::default();
        assert_eq!(due_stage(exp, Progress::None, exp - days(31), &d), None);
        assert_eq!(
            due_stage(exp, Progress::None, exp - days(30), &d),
            Some(Stage::Expiring(30))
        );
        assert_eq!(
            due_stage(exp, Progress::Expiring(30), exp - days(29), &d),
            None
        );
        assert_eq!(
            due_stage(exp, Progress::Expiring(30), exp - days(7), &d),
            Some(Stage::Expiring(7))
        );
        assert_eq!(
            due_stage(exp, Progress::Expiring(7), exp - days(1), &d),
            Some(Stage::Expiring(1))
        );
        assert_eq!(
            due_stage(exp, Progress::Expiring(1), exp - Duration::hours(1), &d),
            None
        );
        assert_eq!(
            due_stage(exp, Progress::Expiring(1), exp, &d),
            Some(Stage::Expired)
        );
    }

    #[test]
    fn a_late_sweep_sends_only_the_nearest_due_stage() {
        let exp = t(2026, 7, 15);
        let d = NoticeDays::default();
        assert_eq!(
            due_stage(exp, Progress::None, exp - days(3), &d),
            Some(Stage::Expiring(7))
        );
        assert_eq!(
            due_stage(exp, Progress::None, exp - Duration::hours(2), &d),
            Some(Stage::Expiring(1))
        );
        // past expiry, nothing sent yet: only "expired"
        assert_eq!(
            due_stage(exp, Progress::None, exp + days(10), &d),
            Some(Stage::Expired)
        );
    }

    #[test]
    fn expired_is_sent_once_and_revoked_stops_all_notices() {
        let exp = t(2026, 7, 15);
        let d = NoticeDays::default();
        assert_eq!(due_stage(exp, Progress::Expired, exp + days(100), &d), None);
        assert_eq!(next_due_at(exp, Progress::Expired, &d), None);
        assert_eq!(due_stage(exp, Progress::Revoked, exp + days(1), &d), None);
        assert_eq!(next_due_at(exp, Progress::Revoked, &d), None);
    }

    #[test]
    fn next_due_at_walks_the_stages_then_expiry() {
        let exp = t(2026, 7, 15);
        let d = NoticeDays::default();
        assert_eq!(next_due_at(exp, Progress::None, &d), Some(exp - days(30)));
        assert_eq!(
            next_due_at(exp, Progress::Expiring(30), &d),
            Some(exp - days(7))
        );
        assert_eq!(
            next_due_at(exp, Progress::Expiring(7), &d),
            Some(exp - days(1))
        );
        assert_eq!(next_due_at(exp, Progress::Expiring(1), &d), Some(exp));
    }

    #[test]
    fn changed_notice_days_continue_below_the_last_stage_sent() {
        let exp = t(2026, 7, 15);
        let d = NoticeDays::parse("30,14,7,1").unwrap();
        assert_eq!(
            next_due_at(exp, Progress::Expiring(7), &d),
            Some(exp - days(1))
        );
        assert_eq!(
            due_stage(exp, Progress::Expiring(30), exp - days(14), &d),
            Some(Stage::Expiring(14))
        );
    }

    #[test]
    fn launch_plan_never_lets_an_older_token_overwrite_a_newer_one() {
        assert_eq!(plan_launch(None, 10), LaunchPlan::Create);
        assert_eq!(
            plan_launch(Some((10, Progress::None)), 9),
            LaunchPlan::Stale
        );
        assert_eq!(
            plan_launch(Some((10, Progress::Expiring(7))), 10),
            LaunchPlan::Refresh
        );
        assert_eq!(
            plan_launch(Some((10, Progress::None)), 11),
            LaunchPlan::Replace { renewed: false }
        );
    }

    #[test]
    fn relaunch_after_any_notice_is_renewed() {
        for p in [Progress::Expiring(30), Progress::Expired, Progress::Revoked] {
            assert_eq!(
                plan_launch(Some((10, p)), 11),
                LaunchPlan::Replace { renewed: true },
                "{p}"
            );
        }
    }
}
