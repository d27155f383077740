//! The one place the services learn the time. The core never asks: it is given `now`.

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock shifted by an adjustable offset: the `--dev` simulator's time travel, and
/// tests that need to be at T-30 days without waiting six months.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_secs: std::sync::atomic::AtomicI64,
}

impl OffsetClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, `now()` reads `at` (and moves on from there).
    pub fn set(&self, at: DateTime<Utc>) {
        let offset = (at - Utc::now()).num_seconds();
        self.offset_secs
            .store(offset, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.offset_secs
            .fetch_add(by.num_seconds(), std::sync::atomic::Ordering::SeqCst);
    }

    pub fn reset(&self) {
        self.offset_secs
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn offset(&self) -> chrono::Duration {
        let secs = self.offset_secs.load(std::sync::atomic::Ordering::SeqCst);
        chrono::Duration::try_seconds(secs).unwrap_or(if secs < 0 {
            chrono::Duration::MIN
        } else {
            chrono::Duration::MAX
        })
    }
}

impl Clock for OffsetClock {
    /// Saturates at the ends of the calendar, however far the simulator travelled.
    fn now(&self) -> DateTime<Utc> {
        let offset = self.offset();
        Utc::now()
            .checked_add_signed(offset)
            .unwrap_or(if offset < chrono::Duration::zero() {
                DateTime::<Utc>::MIN_UTC
            } else {
                DateTime::<Utc>::MAX_UTC
            })
    }
}
