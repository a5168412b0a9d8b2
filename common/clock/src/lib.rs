//! Time as the rest of Tern sees it: unix milliseconds.
//!
//! The adapters of both daemons read the wall clock here ([`unix_millis_now`]) and hand `now` to
//! the pure cores, which never read a clock themselves; [`rfc3339`] is the one text form of a
//! time in the APIs and the CLI.

/// Current wall-clock time as unix milliseconds (0 if the clock is before 1970).
pub fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats unix milliseconds as RFC 3339 (UTC, second precision).
pub fn rfc3339(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_305_600_000), "2026-11-22T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_305_601_999), "2026-11-22T00:00:01Z");
    }

    #[test]
    fn now_is_after_the_project_began() {
        assert!(super::unix_millis_now() > 1_795_305_600_000);
    }
}
