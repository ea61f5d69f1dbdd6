//! Sizes and durations as people write them in flags and registry files: `32 MiB`, `8GB`,
//! `1.5s`, `250ms`, `2m`.

use std::time::Duration;

/// Parses `123`, `64 GiB`, `8GB`, `1.5 MiB`, `512k` into bytes (SI `k`/`M`/`G`/`T`,
/// binary `Ki`/`Mi`/`Gi`/`Ti`, an optional `B`).
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let (value, unit) = split_number(s)?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (try `32 MiB`)"
            ));
        }
    };
    let bytes = (value * mult).round();
    if !bytes.is_finite() || bytes > i64::MAX as f64 {
        return Err(format!("size `{s}` is out of range"));
    }
    Ok(bytes as u64)
}

/// Parses `30s`, `250ms`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (value, unit) = split_number(s)?;
    let secs = match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "us" | "µs" => value / 1e6,
        "m" | "min" | "mins" => value * 60.0,
        "h" | "hour" | "hours" => value * 3600.0,
        "d" | "day" | "days" => value * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (try `30s`)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration `{s}` is out of range"))
}

fn split_number(s: &str) -> Result<(f64, &str), String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    Ok((value, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, n) in [
            ("123", 123),
            ("64 GiB", 64 << 30),
            ("8GB", 8_000_000_000),
            ("1.5 MiB", 1_572_864),
            ("512k", 512_000),
            ("32MiB", 32 << 20),
        ] {
            assert_eq!(parse_byte_size(s), Ok(n), "{s}");
        }
        assert!(parse_byte_size("ten").is_err());
        assert!(parse_byte_size("5 parsecs").is_err());
        assert!(parse_byte_size("-1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("25h"), Ok(Duration::from_secs(25 * 3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
    }
}
