//! A simulated token service's failure switch (ACS and Entra alike): a failure stays on until
//! it is turned off, or for the number of requests asked for. A new failure replaces the one
//! that was on. The page shows what is on.

use std::sync::Mutex;

use serde_json::Value;

/// The most requests one failure can be asked for.
pub const MAX_COUNT: u32 = 1000;

/// How many requests get a failure: all of them until it is turned off, or the next `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    UntilOff,
    Next(u32),
}

impl Times {
    /// `count` from a control request: absent, empty or `until_off`: until turned off; a
    /// number from 1 to 1000: that many requests. Anything else is refused.
    pub fn parse(v: Option<&Value>) -> Result<Times, String> {
        let bad = || format!("count must be until_off or a number from 1 to {MAX_COUNT}");
        let n = match v {
            None | Some(Value::Null) => return Ok(Times::UntilOff),
            Some(Value::String(s)) if s.trim().is_empty() || s.trim() == "until_off" => {
                return Ok(Times::UntilOff);
            }
            Some(Value::String(s)) => s.trim().parse::<u64>().map_err(|_| bad())?,
            Some(Value::Number(n)) => n.as_u64().ok_or_else(bad)?,
            Some(_) => return Err(bad()),
        };
        match u32::try_from(n) {
            Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(Times::Next(n)),
            _ => Err(bad()),
        }
    }
}

/// The failure that is on, if any.
pub struct Switch<F> {
    on: Mutex<Option<(F, Times)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<F: Copy> Switch<F> {
    pub fn new() -> Self {
        Switch {
            on: Mutex::new(None),
        }
    }

    pub fn turn_on(&self, fault: F, times: Times) {
        *lock(&self.on) = Some((fault, times));
    }

    pub fn turn_off(&self) {
        *lock(&self.on) = None;
    }

    /// What this request gets: the failure that is on (counting it down), or none.
    pub fn take(&self) -> Option<F> {
        let mut on = lock(&self.on);
        let (fault, times) = (*on)?;
        *on = match times {
            Times::UntilOff => Some((fault, times)),
            Times::Next(n) if n > 1 => Some((fault, Times::Next(n - 1))),
            Times::Next(_) => None,
        };
        Some(fault)
    }

    pub fn state(&self) -> Option<(F, Times)> {
        *lock(&self.on)
    }
}

/// The state in words, for the page: `HTTP 500, until turned off`, `slow, for the next 3
/// requests`, or `nothing: it answers normally`.
pub fn describe(state: Option<(String, Times)>) -> String {
    match state {
        None => "nothing: it answers normally".into(),
        Some((label, Times::UntilOff)) => format!("{label}, until turned off"),
        Some((label, Times::Next(1))) => format!("{label}, for the next request"),
        Some((label, Times::Next(n))) => format!("{label}, for the next {n} requests"),
    }
}

/// The state as JSON, for the control routes and the stats: `{"mode":…,"remaining":N|null}`.
pub fn to_json(state: Option<(String, Times)>) -> Value {
    match state {
        None => Value::Null,
        Some((mode, times)) => serde_json::json!({
            "mode": mode,
            "remaining": match times {
                Times::UntilOff => Value::Null,
                Times::Next(n) => Value::from(n),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failure_stays_on_until_turned_off() {
        let s = Switch::new();
        s.turn_on('x', Times::UntilOff);
        for _ in 0..10 {
            assert_eq!(s.take(), Some('x'));
        }
        s.turn_off();
        assert_eq!(s.take(), None);
    }

    #[test]
    fn a_counted_failure_ends_after_that_many_requests() {
        let s = Switch::new();
        s.turn_on('x', Times::Next(3));
        assert_eq!(s.state(), Some(('x', Times::Next(3))));
        assert_eq!([s.take(), s.take(), s.take()], [Some('x'); 3]);
        assert_eq!((s.take(), s.state()), (None, None));
    }

    #[test]
    fn a_new_failure_replaces_the_one_that_was_on() {
        let s = Switch::new();
        s.turn_on('x', Times::UntilOff);
        s.turn_on('y', Times::Next(1));
        assert_eq!((s.take(), s.take()), (Some('y'), None));
    }

    #[test]
    fn count_is_until_off_or_a_number_from_1_to_1000() {
        for v in [
            None,
            Some(json!(null)),
            Some(json!("")),
            Some(json!("until_off")),
        ] {
            assert_eq!(Times::parse(v.as_ref()), Ok(Times::UntilOff), "{v:?}");
        }
        assert_eq!(Times::parse(Some(&json!(3))), Ok(Times::Next(3)));
        assert_eq!(Times::parse(Some(&json!(" 10 "))), Ok(Times::Next(10)));
        for bad in [
            json!(0),
            json!(1001),
            json!(-1),
            json!("many"),
            json!(true),
            json!(1.5),
        ] {
            assert!(Times::parse(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_page_says_what_is_on_and_for_how_long() {
        assert_eq!(describe(None), "nothing: it answers normally");
        assert_eq!(
            describe(Some(("HTTP 500".into(), Times::UntilOff))),
            "HTTP 500, until turned off"
        );
        assert_eq!(
            describe(Some(("slow".into(), Times::Next(1)))),
            "slow, for the next request"
        );
        assert_eq!(
            describe(Some(("429".into(), Times::Next(3)))),
            "429, for the next 3 requests"
        );
    }
}
