//! Sizes, rates, dates and durations for people: what the CLI prints and
//! what the logs say, so an operator never has to convert epoch seconds or
//! byte counts by hand. Also the reverse for sizes and rates, so settings
//! and flags take `10MiB` as well as `10485760` ([`parse_bytes`],
//! [`ByteRate`]).
//!
//! Dates are UTC, written `2026-11-24 10:15:03Z`; durations relative to now
//! are written `in 6 days` / `3 hours ago`; sizes use binary units
//! (`1.50 MiB`).

use std::time::Duration;

const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `512 B`, `1.50 MiB`, `2.00 GiB`: binary units, two decimals above a KiB.
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

/// A rate in bytes per second: `1.50 MiB/s`.
pub fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", bytes(bytes_per_sec.max(0.0).round() as u64))
}

/// An elapsed time: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{} ms", d.as_millis())
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        let s = d.as_secs();
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = d.as_secs() / 60;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// A UTC date and time from epoch seconds: `2026-11-24 10:15:03Z`.
pub fn date(epoch_secs: u64) -> String {
    let days = epoch_secs / 86_400;
    let secs = epoch_secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// How far `then` is from `now` (both epoch seconds), in the largest unit
/// that fits: `in 6 days`, `3 hours ago`, `now`.
pub fn relative(then: u64, now: u64) -> String {
    let (gap, future) = if then >= now {
        (then - now, true)
    } else {
        (now - then, false)
    };
    let (n, unit) = match gap {
        0..=59 => return "now".into(),
        60..=3_599 => (gap / 60, "minute"),
        3_600..=86_399 => (gap / 3_600, "hour"),
        _ => (gap / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if future {
        format!("in {n} {unit}{plural}")
    } else {
        format!("{n} {unit}{plural} ago")
    }
}

/// [`date`] followed by [`relative`] to the current time:
/// `2026-11-24 10:15:03Z (in 6 days)`.
pub fn date_and_relative(epoch_secs: u64) -> String {
    format!(
        "{} ({})",
        date(epoch_secs),
        relative(epoch_secs, crate::announce::now())
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a size: {0:?} (want bytes, or a number with a unit such as 512KiB, 10MiB, 1.5GB)")]
pub struct BadSize(pub String);

/// Parses a size: a plain number of bytes, or a number with a unit (`B`,
/// `k`/`KB` = 1000, `KiB` = 1024, and so on up to `T`), spaces allowed,
/// case ignored, an optional `/s` after it (for rates).
pub fn parse_bytes(s: &str) -> Result<u64, BadSize> {
    let bad = || BadSize(s.to_string());
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v.round() as u64)
}

/// A rate in bytes per second, written in settings and flags as a number of
/// bytes or with a unit (`"10MiB"`, `"500 KB/s"`); `0` or `"unlimited"`
/// means no limit. Shown exactly, in the largest unit that divides it
/// (`"10 MiB/s"`, `"1500 kB/s"`, `"1234 B/s"`), so it reads back the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteRate(pub u64);

impl ByteRate {
    /// Bytes per second, or `None` when unlimited.
    pub fn get(self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }
}

impl std::str::FromStr for ByteRate {
    type Err = BadSize;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "unlimited" | "none" | "off" => Ok(ByteRate(0)),
            _ => parse_bytes(s).map(ByteRate),
        }
    }
}

impl std::fmt::Display for ByteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(u64, &str); 6] = [
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
            (1_000_000_000, "GB"),
            (1_000_000, "MB"),
            (1_000, "kB"),
        ];
        let Some(n) = self.get() else {
            return f.write_str("unlimited");
        };
        match UNITS.iter().find(|(u, _)| n % u == 0) {
            Some((u, name)) => write!(f, "{} {name}/s", n / u),
            None => write!(f, "{n} B/s"),
        }
    }
}

impl serde::Serialize for ByteRate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteRate;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes per second, e.g. 10485760 or \"10MiB\" or \"unlimited\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteRate, E> {
                Ok(ByteRate(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteRate, E> {
                u64::try_from(v)
                    .map(ByteRate)
                    .map_err(|_| E::custom("a rate cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteRate, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.00 KiB");
        assert_eq!(bytes(1536 << 10), "1.50 MiB");
        assert_eq!(bytes(5 << 30), "5.00 GiB");
        assert_eq!(rate(4.0 * 1048576.0), "4.00 MiB/s");
        assert_eq!(rate(-3.0), "0 B/s");
    }

    #[test]
    fn dates_and_relative_times() {
        assert_eq!(date(0), "1970-01-01 00:00:00Z");
        // A leap day, and the end of a century that is a leap year.
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(date(1_795_515_303), "2026-11-24 10:15:03Z");
        assert_eq!(relative(1_000, 1_000), "now");
        assert_eq!(relative(1_000 + 6 * 86_400 + 5, 1_000), "in 6 days");
        assert_eq!(relative(1_000, 1_000 + 3 * 3_600), "3 hours ago");
        assert_eq!(relative(1_000 + 60, 1_000), "in 1 minute");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_millis(12_340)), "12.3 s");
        assert_eq!(duration(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(duration(Duration::from_secs(7_380)), "2 h 03 min");
    }

    #[test]
    fn sizes_parse_with_or_without_units() {
        assert_eq!(parse_bytes("10485760"), Ok(10 << 20));
        assert_eq!(parse_bytes("10MiB"), Ok(10 << 20));
        assert_eq!(parse_bytes("10 mib/s"), Ok(10 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert_eq!(parse_bytes("512k"), Ok(512_000));
        assert_eq!(parse_bytes("0"), Ok(0));
        for bad in ["", "MiB", "10 parsecs", "-1", "1e400"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
