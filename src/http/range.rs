//! The `Range` request header (RFC 9110, section 14): which bytes of a
//! representation of known length a client asked for.

use std::ops::Range;

/// More range-specs than this in one request and the header is ignored
/// (the whole representation is sent), as RFC 9110 allows: it keeps a
/// client from making the server assemble thousands of tiny parts.
pub const MAX_RANGES: usize = 100;

/// What a `Range` header asks of a representation of a given length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ranges {
    /// No usable header (absent, another unit, syntactically invalid, or
    /// too many ranges): send the whole representation with 200.
    Whole,
    /// No range overlaps the representation: 416.
    Unsatisfiable,
    /// Byte ranges to send with 206: sorted, non-overlapping, non-adjacent,
    /// each within the representation.
    Some(Vec<Range<u64>>),
}

/// Parses a `Range` header value against a representation of `len` bytes.
/// Overlapping and adjacent ranges are merged (RFC 9110 lets a server
/// coalesce them), so a part is never sent twice.
pub fn parse(header: &str, len: u64) -> Ranges {
    let Some((unit, specs)) = header.split_once('=') else {
        return Ranges::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Whole;
    }
    let mut out = Vec::new();
    let mut count = 0;
    for spec in specs.split(',') {
        let spec = spec.trim_matches([' ', '\t']);
        if spec.is_empty() {
            // Empty list elements are allowed by the list syntax.
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return Ranges::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Whole;
        };
        let r = match (number(first), number(last)) {
            (None, Some(Some(suffix))) if first.is_empty() => {
                if suffix == 0 || len == 0 {
                    None
                } else {
                    Some(len - suffix.min(len)..len)
                }
            }
            (Some(Some(first)), None) if last.is_empty() => (first < len).then_some(first..len),
            (Some(Some(first)), Some(Some(last))) => {
                if last < first {
                    return Ranges::Whole;
                }
                (first < len).then(|| first..last.min(len - 1) + 1)
            }
            _ => return Ranges::Whole,
        };
        out.extend(r);
    }
    if count == 0 {
        return Ranges::Whole;
    }
    if out.is_empty() {
        return Ranges::Unsatisfiable;
    }
    out.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(out.len());
    for r in out {
        match merged.last_mut() {
            Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
            _ => merged.push(r),
        }
    }
    Ranges::Some(merged)
}

/// `None` when `s` is empty (the caller decides whether that is allowed),
/// `Some(None)` when it is not a decimal number that fits in a u64.
fn number(s: &str) -> Option<Option<u64>> {
    if s.is_empty() {
        return None;
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(None);
    }
    Some(s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(v: &[(u64, u64)]) -> Ranges {
        Ranges::Some(v.iter().map(|&(a, b)| a..b).collect())
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse("bytes=0-99", 1000), some(&[(0, 100)]));
        assert_eq!(parse("bytes=900-", 1000), some(&[(900, 1000)]));
        assert_eq!(parse("bytes=-100", 1000), some(&[(900, 1000)]));
        assert_eq!(parse("bytes=-5000", 1000), some(&[(0, 1000)]));
        assert_eq!(parse("bytes=990-5000", 1000), some(&[(990, 1000)]));
        assert_eq!(parse("BYTES = 5-5", 1000), some(&[(5, 6)]));
    }

    #[test]
    fn multiple_ranges_are_sorted_and_merged() {
        assert_eq!(
            parse("bytes=500-599, 0-99,\t-10", 1000),
            some(&[(0, 100), (500, 600), (990, 1000)])
        );
        assert_eq!(parse("bytes=0-10,5-20,21-30", 1000), some(&[(0, 31)]));
        assert_eq!(parse("bytes=0-1,,3-4", 1000), some(&[(0, 2), (3, 5)]));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(parse("bytes=1000-", 1000), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=1000-2000", 1000), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 1000), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-1", 0), Ranges::Unsatisfiable);
        // The satisfiable ones of a mixed list are kept.
        assert_eq!(parse("bytes=2000-,0-0", 1000), some(&[(0, 1)]));
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for h in [
            "bytes=5-1",
            "bytes=abc",
            "bytes=1-2-3",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "items=0-1",
            "0-1",
            "bytes=0x1-2",
        ] {
            assert_eq!(parse(h, 1000), Ranges::Whole, "{h}");
        }
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(parse(&many, 1000), Ranges::Whole);
        let max = format!("bytes={}", vec!["0-0"; MAX_RANGES].join(","));
        assert_eq!(parse(&max, 1000), some(&[(0, 1)]));
    }
}
