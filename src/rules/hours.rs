//! Business hours: days of the week and a time range in an IANA time zone, evaluated with the
//! zone's daylight-saving rules at the instant given.

use chrono::{DateTime, Datelike, NaiveTime, Timelike, Utc, Weekday};
use chrono_tz::Tz;

/// One range: `{ tz = "Europe/Madrid", days = "mon-fri", from = "09:00", to = "18:00" }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hours {
    tz: Tz,
    /// Bit `n` set: weekday `n` (Monday = 0) is included.
    days: u8,
    /// Minutes since midnight, `from < to`; `to` may be 24:00.
    from: u32,
    to: u32,
}

impl Hours {
    pub fn parse(tz: &str, days: &str, from: &str, to: &str) -> Result<Self, String> {
        let tz: Tz = tz.parse().map_err(|_| {
            format!("unknown time zone {tz:?} (use an IANA name like \"Europe/Madrid\")")
        })?;
        let days = parse_days(days)?;
        let (from_m, to_m) = (parse_time(from)?, parse_time(to)?);
        if from_m >= to_m {
            return Err(format!(
                "impossible hour range {from}-{to}: `from` must be before `to` (split an overnight range in two)"
            ));
        }
        Ok(Hours {
            tz,
            days,
            from: from_m,
            to: to_m,
        })
    }

    /// Whether `now` falls inside the range, in the range's own time zone.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.tz);
        let day = local.weekday().num_days_from_monday();
        let minute = local.hour() * 60 + local.minute();
        self.days & (1 << day) != 0 && (self.from..self.to).contains(&minute)
    }
}

fn parse_days(spec: &str) -> Result<u8, String> {
    let mut days = 0u8;
    for item in spec.split(',').map(str::trim) {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let (a, b) = (weekday(a)?, weekday(b)?);
        // A range may wrap around the week: "fri-mon".
        let mut d = a;
        loop {
            days |= 1 << d;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

fn weekday(name: &str) -> Result<u32, String> {
    name.trim()
        .parse::<Weekday>()
        .map(|d| d.num_days_from_monday())
        .map_err(|_| format!("unknown day {name:?} (use mon, tue, ..., sun, ranges like mon-fri, lists like sat,sun)"))
}

fn parse_time(s: &str) -> Result<u32, String> {
    if s.trim() == "24:00" {
        return Ok(24 * 60);
    }
    NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .map(|t| t.hour() * 60 + t.minute())
        .map_err(|_| format!("impossible time {s:?} (use HH:MM, 00:00 to 24:00)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    #[test]
    fn office_hours_in_madrid_follow_daylight_saving() {
        let h = Hours::parse("Europe/Madrid", "mon-fri", "09:00", "18:00").unwrap();
        // Winter (UTC+1): Monday 2026-01-05 08:00 UTC is 09:00 local.
        assert!(h.contains(utc(2026, 1, 5, 8, 0)));
        assert!(!h.contains(utc(2026, 1, 5, 7, 59)));
        assert!(!h.contains(utc(2026, 1, 5, 17, 0)), "18:00 local is closed");
        // Summer (UTC+2): the same UTC instant is an hour later locally.
        assert!(h.contains(utc(2026, 7, 6, 7, 0)));
        assert!(!h.contains(utc(2026, 7, 6, 6, 59)));
        // The spring-forward Sunday is a weekend anyway; Monday after it is summer time.
        assert!(h.contains(utc(2026, 3, 30, 7, 0)));
        // Saturday is closed.
        assert!(!h.contains(utc(2026, 1, 10, 10, 0)));
    }

    #[test]
    fn the_local_day_decides_not_the_utc_day() {
        // 23:30 UTC on a Friday is Saturday 08:30 in Tokyo.
        let sat = Hours::parse("Asia/Tokyo", "sat", "08:00", "12:00").unwrap();
        assert!(sat.contains(utc(2026, 1, 9, 23, 30)));
        let ny = Hours::parse("America/New_York", "mon-fri", "09:00", "17:30").unwrap();
        // Friday 21:00 UTC is 16:00 in New York (EST); 22:30 UTC is 17:30: closed.
        assert!(ny.contains(utc(2026, 1, 9, 21, 0)));
        assert!(!ny.contains(utc(2026, 1, 9, 22, 30)));
    }

    #[test]
    fn day_lists_ranges_and_wrapping() {
        assert_eq!(parse_days("mon-fri").unwrap(), 0b0011111);
        assert_eq!(parse_days("sat, sun").unwrap(), 0b1100000);
        assert_eq!(parse_days("fri-mon").unwrap(), 0b1110001);
        assert_eq!(parse_days("Wed").unwrap(), 0b0000100);
        assert!(parse_days("someday").is_err());
    }

    #[test]
    fn impossible_ranges_and_zones_are_errors() {
        assert!(
            Hours::parse("Mars/Olympus", "mon", "09:00", "10:00")
                .unwrap_err()
                .contains("time zone")
        );
        assert!(
            Hours::parse("UTC", "mon", "25:00", "26:00")
                .unwrap_err()
                .contains("impossible time")
        );
        assert!(
            Hours::parse("UTC", "mon", "18:00", "09:00")
                .unwrap_err()
                .contains("impossible hour range")
        );
        assert!(Hours::parse("UTC", "mon", "09:00", "09:00").is_err());
        let all_day = Hours::parse("UTC", "mon-sun", "00:00", "24:00").unwrap();
        assert!(all_day.contains(utc(2026, 1, 5, 23, 59)));
    }
}
