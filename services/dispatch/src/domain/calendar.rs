//! Deadlines on a working-day calendar: office hours on working days, public
//! holidays off, make-up working days (调休) on, in the city's time zone.
//! Emergencies and urgent cases run on the wall clock instead.

use std::collections::BTreeSet;

use time::{Date, Duration, OffsetDateTime, Time, UtcOffset, Weekday};

/// How a deadline's duration is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Round the clock.
    Wall,
    /// Office hours on working days only.
    Working,
}

/// A city's working calendar.
#[derive(Debug, Clone)]
pub struct WorkingCalendar {
    /// Local offset from UTC (China: +8).
    pub offset: UtcOffset,
    /// Office hours start.
    pub opens: Time,
    /// Office hours end.
    pub closes: Time,
    /// Public holidays (days off even if a weekday).
    pub holidays: BTreeSet<Date>,
    /// Make-up working days (working even if a weekend).
    pub workdays: BTreeSet<Date>,
}

impl Default for WorkingCalendar {
    fn default() -> Self {
        Self {
            offset: UtcOffset::from_hms(8, 0, 0).unwrap_or(UtcOffset::UTC),
            opens: Time::from_hms(8, 30, 0).unwrap_or(Time::MIDNIGHT),
            closes: Time::from_hms(17, 30, 0).unwrap_or(Time::MIDNIGHT),
            holidays: BTreeSet::new(),
            workdays: BTreeSet::new(),
        }
    }
}

impl WorkingCalendar {
    /// Whether `day` is a working day.
    pub fn is_working_day(&self, day: Date) -> bool {
        if self.workdays.contains(&day) {
            return true;
        }
        if self.holidays.contains(&day) {
            return false;
        }
        !matches!(day.weekday(), Weekday::Saturday | Weekday::Sunday)
    }

    /// `start` plus `duration`, counted as `counting` says.
    pub fn add(&self, start_unix_ms: i64, duration: Duration, counting: Counting) -> i64 {
        if counting == Counting::Wall {
            return start_unix_ms + duration.whole_milliseconds() as i64;
        }
        let Ok(start) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_unix_ms) * 1_000_000) else {
            return start_unix_ms;
        };
        let mut at = start.to_offset(self.offset);
        let mut left = duration;
        // Bounded: a duration can span at most a few hundred days of office hours.
        for _ in 0..3660 {
            let day = at.date();
            let open = day.with_time(self.opens).assume_offset(self.offset);
            let close = day.with_time(self.closes).assume_offset(self.offset);
            if !self.is_working_day(day) || at >= close {
                at = next_day(day).with_time(self.opens).assume_offset(self.offset);
                continue;
            }
            if at < open {
                at = open;
            }
            let available = close - at;
            if left <= available {
                let done = at + left;
                return (done.unix_timestamp_nanos() / 1_000_000) as i64;
            }
            left -= available;
            at = next_day(day).with_time(self.opens).assume_offset(self.offset);
        }
        (at.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

fn next_day(d: Date) -> Date {
    d.next_day().unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use time::macros::{date, datetime};

    use super::*;

    fn ms(t: OffsetDateTime) -> i64 {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    #[test]
    fn working_time_skips_nights_weekends_and_holidays_but_not_make_up_days() {
        let mut cal = WorkingCalendar::default();
        // Friday 16:30 + 2 working hours = Monday 09:30.
        let fri = ms(datetime!(2026-03-06 16:30 +8));
        assert_eq!(cal.add(fri, Duration::hours(2), Counting::Working), ms(datetime!(2026-03-09 09:30 +8)));
        // Monday a holiday: Tuesday 09:30.
        cal.holidays.insert(date!(2026 - 03 - 09));
        assert_eq!(cal.add(fri, Duration::hours(2), Counting::Working), ms(datetime!(2026-03-10 09:30 +8)));
        // Saturday a make-up working day: Saturday 09:30.
        cal.workdays.insert(date!(2026 - 03 - 07));
        assert_eq!(cal.add(fri, Duration::hours(2), Counting::Working), ms(datetime!(2026-03-07 09:30 +8)));
    }

    #[test]
    fn before_opening_the_clock_starts_at_opening() {
        let cal = WorkingCalendar::default();
        let early = ms(datetime!(2026-03-04 06:00 +8));
        assert_eq!(cal.add(early, Duration::minutes(30), Counting::Working), ms(datetime!(2026-03-04 09:00 +8)));
    }

    #[test]
    fn wall_time_ignores_the_calendar() {
        let cal = WorkingCalendar::default();
        let sat = ms(datetime!(2026-03-07 23:00 +8));
        assert_eq!(cal.add(sat, Duration::minutes(30), Counting::Wall), ms(datetime!(2026-03-07 23:30 +8)));
    }
}
