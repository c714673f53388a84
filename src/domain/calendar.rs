//! UTC calendar time for the whole crate, on jiff (budget periods, report and CLI times):
//! milliseconds since the epoch in, calendar values out.

/// One hour in milliseconds (a ledger bucket, a report series bucket).
pub const HOUR_MS: u64 = 3_600_000;
/// One day in milliseconds: 24 hours (UTC has no daylight saving).
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// `ms` since the epoch as a timestamp, clamped to the last instant the calendar holds (the end
/// of year 9999).
pub fn timestamp(ms: u64) -> jiff::Timestamp {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

/// A point in time as a person writes it (the CLI's `--since`, `/report?since=`): a UTC date, an
/// RFC 3339 time, or a duration ago (`24h`, `7d`, `2h 30m`; `0` is now). The error says what was
/// expected.
pub fn parse_instant(s: &str, now_ms: u64) -> Result<u64, String> {
    use jiff::tz::TimeZone;
    let bad = |why: &str| {
        format!(
            "cannot read time {} (a duration like 24h, a date like 2026-11-01, or 2026-11-01T08:00:00Z): {why}",
            crate::domain::labels::shown(s)
        )
    };
    if s.trim() == "0" {
        return Ok(now_ms);
    }
    // A duration ago: `24h`, `7d`, `2h 30m`, `90 minutes`; days are 24 hours, and months and
    // years 30.44 and 365.25 days (as before).
    if let Ok(span) = s.parse::<jiff::Span>() {
        if span.is_negative() {
            return Err(bad("a duration ago is positive"));
        }
        let calendar_days =
            f64::from(span.get_years()) * 365.25 + f64::from(span.get_months()) * 30.44;
        let rest = span
            .years(0)
            .months(0)
            .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
            .map_err(|e| bad(&e.to_string()))?;
        let ms = rest.as_millis() as f64 + calendar_days * DAY_MS as f64;
        return Ok(now_ms.saturating_sub(ms as u64));
    }
    let at = s.parse::<jiff::Timestamp>().or_else(|_| {
        s.parse::<jiff::civil::DateTime>()
            .or_else(|_| s.parse::<jiff::civil::Date>().map(|d| d.at(0, 0, 0, 0)))
            .and_then(|dt| dt.to_zoned(TimeZone::UTC))
            .map(|z| z.timestamp())
    });
    match at {
        Ok(t) if t.as_millisecond() > 0 => Ok(t.as_millisecond() as u64),
        Ok(_) => Err(bad("before 1970")),
        Err(e) => Err(bad(&e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_instant;

    #[test]
    fn instants_are_durations_ago_dates_or_times() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_instant("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_instant("2026-11-01", now).unwrap(), 1_793_491_200_000);
        assert_eq!(
            parse_instant("2026-11-01T08:00:00Z", now).unwrap(),
            1_793_491_200_000 + 8 * 3_600_000
        );
        assert!(parse_instant("yesterday", now).is_err());
        // As humantime read them: months and years at 30.44 and 365.25 days, "0" is now.
        assert_eq!(
            parse_instant("1month", now).unwrap(),
            now - (30.44 * 86_400_000.0) as u64
        );
        assert_eq!(
            parse_instant("1y", now).unwrap(),
            now - (365.25 * 86_400_000.0) as u64
        );
        assert_eq!(parse_instant("0", now).unwrap(), now);
        assert_eq!(parse_instant("2h 30m", now).unwrap(), now - 9_000_000);
        // Never a silent "0" (which the server reads as its default window).
        for wrong in ["-2h", "2h ago", "1969-12-31"] {
            let e = parse_instant(wrong, now).unwrap_err().to_string();
            assert!(e.contains("cannot read time"), "{wrong}: {e}");
        }
    }
}
