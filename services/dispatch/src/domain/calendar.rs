//! Deadlines on a working-day calendar: office hours on working days, public
//! holidays off, make-up working days (调休) on, in the city's time zone
//! (Asia/Shanghai: UTC+8 all year). A deadline's length is a [`Span`]: wall
//! time, office hours, working days or calendar days — a working *day* is a
//! day, not eight office hours.

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

/// How long a deadline runs, and how it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// Round the clock (emergencies, a lonely elder's need).
    Wall(Duration),
    /// Office hours on working days (a 2-hour acknowledgement at 16:30 on a
    /// Friday falls due at 09:30 on Monday).
    OfficeHours(Duration),
    /// Whole working days: due at closing time of the n-th working day after the
    /// day it starts (the starting day is not counted, as in administrative law).
    WorkingDays(u32),
    /// Whole calendar days, round the clock.
    CalendarDays(u32),
}

impl Span {
    /// The same kind of counting for another length: a summons window follows
    /// the case's counting (office time for ordinary cases, wall time for
    /// emergencies).
    pub fn counting_like(self, d: Duration) -> Span {
        match self {
            Span::Wall(_) | Span::CalendarDays(_) => Span::Wall(d),
            Span::OfficeHours(_) | Span::WorkingDays(_) => Span::OfficeHours(d),
        }
    }
}

/// The China calendar the service ships: `data/cn-calendar.txt`.
pub const CHINA: &str = include_str!("../../data/cn-calendar.txt");

/// A city's working calendar.
#[derive(Debug, Clone, PartialEq)]
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
    /// Years whose holidays and make-up days are all entered.
    pub complete_years: BTreeSet<i32>,
}

impl Default for WorkingCalendar {
    fn default() -> Self {
        Self {
            offset: UtcOffset::from_hms(8, 0, 0).unwrap_or(UtcOffset::UTC),
            opens: Time::from_hms(8, 30, 0).unwrap_or(Time::MIDNIGHT),
            closes: Time::from_hms(17, 30, 0).unwrap_or(Time::MIDNIGHT),
            holidays: BTreeSet::new(),
            workdays: BTreeSet::new(),
            complete_years: BTreeSet::new(),
        }
    }
}

impl WorkingCalendar {
    /// China's calendar as shipped ([`CHINA`]).
    pub fn china() -> Self {
        let mut calendar = Self::default();
        // The shipped file is checked by a unit test; a line it cannot read is a
        // build defect, not a runtime condition.
        calendar.load(CHINA).unwrap_or_default();
        calendar
    }

    /// Add the dates of a calendar file (see `data/cn-calendar.txt`); an
    /// unreadable line is named by its number.
    pub fn load(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(year) = line.strip_prefix("# complete ") {
                let year = year.trim().parse().map_err(|_| format!("line {}: {line:?} names no year", n + 1))?;
                self.complete_years.insert(year);
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(day), Some(kind)) = (parts.next(), parts.next()) else {
                return Err(format!("line {}: {line:?} is not \"<date> off|work <name>\"", n + 1));
            };
            let day = Date::parse(day, &time::format_description::well_known::Iso8601::DATE)
                .map_err(|_| format!("line {}: {day:?} is not a date YYYY-MM-DD", n + 1))?;
            match kind {
                "off" => self.holidays.insert(day),
                "work" => self.workdays.insert(day),
                other => return Err(format!("line {}: {other:?} is neither off nor work", n + 1)),
            };
        }
        Ok(())
    }

    /// `start` plus `span`.
    pub fn after(&self, start_unix_ms: i64, span: Span) -> i64 {
        match span {
            Span::Wall(d) => start_unix_ms + d.whole_milliseconds() as i64,
            Span::CalendarDays(n) => start_unix_ms + i64::from(n) * 86_400_000,
            Span::OfficeHours(d) => self.add(start_unix_ms, d, Counting::Working),
            Span::WorkingDays(n) => self.working_days_after(start_unix_ms, n),
        }
    }

    fn working_days_after(&self, start_unix_ms: i64, n: u32) -> i64 {
        let Ok(start) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_unix_ms) * 1_000_000) else {
            return start_unix_ms;
        };
        let mut day = start.to_offset(self.offset).date();
        let mut left = n;
        // Bounded: a year of days covers any plan's working days.
        for _ in 0..(3660 + n) {
            if left == 0 {
                break;
            }
            day = next_day(day);
            if self.is_working_day(day) {
                left -= 1;
            }
        }
        let close = day.with_time(self.closes).assume_offset(self.offset);
        (close.unix_timestamp_nanos() / 1_000_000) as i64
    }

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
    fn working_days_are_days_not_office_hours_and_skip_the_spring_festival() {
        let cal = WorkingCalendar::china();
        // Thursday 2026-03-05 10:00 + 20 working days: the day itself not
        // counted, four weeks of weekdays on (no holiday in March 2026).
        let thu = ms(datetime!(2026-03-05 10:00 +8));
        assert_eq!(cal.after(thu, Span::WorkingDays(20)), ms(datetime!(2026-04-02 17:30 +8)));
        // Friday 2026-02-13 + 1 working day: Saturday the 14th is a make-up
        // working day; the festival runs 15th–23rd.
        let before = ms(datetime!(2026-02-13 15:00 +8));
        assert_eq!(cal.after(before, Span::WorkingDays(1)), ms(datetime!(2026-02-14 17:30 +8)));
        assert_eq!(cal.after(before, Span::WorkingDays(2)), ms(datetime!(2026-02-24 17:30 +8)));
        // National Day: 2026-09-30 + 1 working day is 2026-10-08.
        let eve = ms(datetime!(2026-09-30 11:00 +8));
        assert_eq!(cal.after(eve, Span::WorkingDays(1)), ms(datetime!(2026-10-08 17:30 +8)));
        // Calendar days and wall time ignore it all.
        assert_eq!(cal.after(eve, Span::CalendarDays(7)), eve + 7 * 86_400_000);
        assert_eq!(cal.after(eve, Span::Wall(Duration::hours(4))), eve + 4 * 3_600_000);
    }

    #[test]
    fn the_shipped_calendar_reads_and_says_which_years_are_complete() {
        let mut cal = WorkingCalendar::default();
        cal.load(CHINA).expect("the shipped calendar reads");
        assert_eq!(cal, WorkingCalendar::china());
        assert!(cal.complete_years.contains(&2026));
        assert!(!cal.complete_years.contains(&2027), "2027's bridging and make-up days are not entered yet");
        // 2027's statutory lunar holidays are: the Spring Festival's eve and first three days.
        assert!(
            (5..=8).all(|d| cal
                .holidays
                .contains(&Date::from_calendar_date(2027, time::Month::February, d).expect("date")))
        );
        assert!(cal.holidays.contains(&date!(2027 - 09 - 15)) && cal.holidays.contains(&date!(2027 - 06 - 09)));
        assert!(cal.holidays.contains(&date!(2026 - 02 - 17)) && cal.workdays.contains(&date!(2026 - 10 - 10)));
        assert!(!cal.is_working_day(date!(2026 - 10 - 05)) && cal.is_working_day(date!(2026 - 09 - 20)));
        let mut bad = WorkingCalendar::default();
        assert_eq!(
            bad.load("2026-13-01 off x").expect_err("refused"),
            "line 1: \"2026-13-01\" is not a date YYYY-MM-DD"
        );
        assert_eq!(
            bad.load("# c\n2026-01-01 maybe").expect_err("refused"),
            "line 2: \"maybe\" is neither off nor work"
        );
    }

    #[test]
    fn wall_time_ignores_the_calendar() {
        let cal = WorkingCalendar::default();
        let sat = ms(datetime!(2026-03-07 23:00 +8));
        assert_eq!(cal.add(sat, Duration::minutes(30), Counting::Wall), ms(datetime!(2026-03-07 23:30 +8)));
    }
}
