//! Wall-clock time as the stores need it: Unix seconds and milliseconds, and the
//! UTC calendar day (quotas, usage and budgets count per UTC day).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `yyyy-mm-dd` (UTC) of a Unix time.
pub fn utc_date(unix_secs: u64) -> String {
    let (year, month, day) = civil(unix_secs);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `yyyy-mm` (UTC) of a Unix time: the calendar month budgets count in.
pub fn utc_month(unix_secs: u64) -> String {
    let (year, month, _) = civil(unix_secs);
    format!("{year:04}-{month:02}")
}

/// The Unix time of the next UTC midnight after `unix_secs`.
pub fn next_midnight(unix_secs: u64) -> u64 {
    (unix_secs / 86_400 + 1) * 86_400
}

/// The Unix time of 00:00 UTC on the first day of the month after `unix_secs`'s.
pub fn next_month_start(unix_secs: u64) -> u64 {
    let (year, month, _) = civil(unix_secs);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    unix_of_date(year, month, 1)
}

/// `yyyy-mm-ddThh:mm:ssZ` (RFC 3339, UTC) of a Unix time.
pub fn rfc3339(unix_secs: u64) -> String {
    let secs_of_day = unix_secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        utc_date(unix_secs),
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// Unix time of 00:00 UTC on a proleptic Gregorian date (0 before 1970).
pub fn unix_of_date(year: i64, month: i64, day: i64) -> u64 {
    // Howard Hinnant's days_from_civil, the inverse of `civil`.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    u64::try_from(days * 86_400).unwrap_or(0)
}

/// (year, month, day) in UTC of a Unix time (Howard Hinnant's civil_from_days).
fn civil(unix_secs: u64) -> (i64, i64, i64) {
    let days = (unix_secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_374_000), "2026-11-22");
    }

    #[test]
    fn periods_end_at_utc_midnights_and_month_starts() {
        assert_eq!(utc_month(1_795_374_000), "2026-11");
        assert_eq!(
            rfc3339(next_midnight(1_795_374_000)),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            rfc3339(next_month_start(1_795_374_000)),
            "2026-12-01T00:00:00Z"
        );
        // December rolls over into January; February of a leap year has 29 days.
        let december = unix_of_date(2026, 12, 31) + 3_600;
        assert_eq!(rfc3339(next_month_start(december)), "2027-01-01T00:00:00Z");
        assert_eq!(utc_date(unix_of_date(2028, 3, 1) - 1), "2028-02-29");
        assert_eq!(rfc3339(1_795_374_061), "2026-11-22T19:01:01Z");
        for secs in [0, 951_782_400, 1_795_374_000, 4_102_444_800] {
            let (y, m, d) = civil(secs);
            assert_eq!(unix_of_date(y, m, d), secs - secs % 86_400);
        }
    }
}
