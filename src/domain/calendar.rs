//! UTC calendar time for the whole crate, on jiff (budget periods, report and CLI times):
//! milliseconds since the epoch in, calendar values out.

/// `ms` since the epoch as a timestamp, clamped to the last instant the calendar holds (the end
/// of year 9999).
pub fn timestamp(ms: u64) -> jiff::Timestamp {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}
