//! Time as a dependency: services take a [`Clock`], tests pass a fixed or
//! hand-advanced one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of "now", in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now_unix_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `unix_ms`.
    pub fn at(unix_ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(unix_ms)))
    }
    /// Move it forward.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The city's time zone: Asia/Shanghai, UTC+8 all year (China has kept no
/// daylight saving since 1991). Dates a person reads or enters — "today", a
/// certificate's last day, a deadline's day — are dates here, not in UTC.
pub const CITY_OFFSET: time::UtcOffset = match time::UtcOffset::from_hms(8, 0, 0) {
    Ok(offset) => offset,
    Err(_) => time::UtcOffset::UTC,
};

/// `unix_ms` in the city's time zone.
pub fn city_time(unix_ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .map_or(time::OffsetDateTime::UNIX_EPOCH, |t| t.to_offset(CITY_OFFSET))
}

/// The city's date at `unix_ms`.
pub fn city_today(unix_ms: i64) -> time::Date {
    city_time(unix_ms).date()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_city_date_turns_at_midnight_in_shanghai_not_in_utc() {
        // 2026-12-31 16:30 UTC is 2027-01-01 00:30 in the city.
        let ms = (time::macros::datetime!(2026-12-31 16:30 UTC).unix_timestamp()) * 1000;
        assert_eq!(city_today(ms), time::macros::date!(2027 - 01 - 01));
        assert_eq!(city_today(ms - 3_600_000), time::macros::date!(2026 - 12 - 31));
    }
}
