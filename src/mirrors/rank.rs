//! Ranking the mirrors that qualify for a client: first those whose
//! preferred prefixes hold the client's address, then those in the
//! client's region, then by measured distance; mirrors about equally near
//! (within [`NEAR_ABS`] or [`NEAR_FACTOR`] of the nearest left) form one
//! band, ordered by a random draw weighted by declared capacity so load
//! spreads in proportion to it.

use std::net::IpAddr;
use std::time::Duration;

use libp2p::PeerId;

/// Distances within this of the nearest count as equal.
pub const NEAR_ABS: Duration = Duration::from_millis(10);
/// ... or within this factor of it, whichever is larger.
pub const NEAR_FACTOR: f64 = 1.5;

/// A mirror that holds the current version and passed its health check.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The mirror.
    pub peer: PeerId,
    /// Its base URL.
    pub base: String,
    /// Its region label ("" for none).
    pub region: String,
    /// Client prefixes it prefers.
    pub prefer: Vec<ipnet::IpNet>,
    /// Declared capacity, Mbit/s (already defaulted when 0).
    pub capacity_mbps: u32,
    /// Measured distance (ping or probe round-trip time).
    pub distance: Duration,
}

/// A candidate with its place: priority 1 is best; candidates of one band
/// share a priority.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// The mirror.
    pub candidate: Candidate,
    /// Its band, 1 first.
    pub priority: u32,
}

/// What is known about the client.
#[derive(Clone, Debug, Default)]
pub struct Client {
    /// Its address, as the connection shows it.
    pub addr: Option<IpAddr>,
    /// Its region label (from `?region=` or a GeoIP database).
    pub region: Option<String>,
}

fn class(c: &Candidate, client: &Client) -> (bool, bool) {
    let addr = client.addr.map(|a| a.to_canonical());
    let in_prefix = addr.is_some_and(|a| c.prefer.iter().any(|p| p.contains(&a)));
    let same_region = client
        .region
        .as_deref()
        .is_some_and(|r| !r.is_empty() && r.eq_ignore_ascii_case(&c.region));
    // false sorts first: matches come first.
    (!in_prefix, !same_region)
}

/// Ranks `candidates` for `client`; `random` yields numbers in [0, 1).
pub fn rank(
    mut candidates: Vec<Candidate>,
    client: &Client,
    random: &mut dyn FnMut() -> f64,
) -> Vec<Ranked> {
    candidates.sort_by_key(|a| (class(a, client), a.distance));
    let mut out = Vec::with_capacity(candidates.len());
    let mut priority = 0;
    let mut rest = candidates.as_slice();
    while let Some(first) = rest.first() {
        priority += 1;
        let cls = class(first, client);
        let near = (first.distance + NEAR_ABS).max(first.distance.mul_f64(NEAR_FACTOR));
        let n = rest
            .iter()
            .take_while(|c| class(c, client) == cls && c.distance <= near)
            .count();
        let mut band: Vec<Candidate> = rest[..n].to_vec();
        rest = &rest[n..];
        while !band.is_empty() {
            let total: f64 = band.iter().map(|c| f64::from(c.capacity_mbps.max(1))).sum();
            let mut x = random() * total;
            let mut pick = band.len() - 1;
            for (i, c) in band.iter().enumerate() {
                let w = f64::from(c.capacity_mbps.max(1));
                if x < w {
                    pick = i;
                    break;
                }
                x -= w;
            }
            out.push(Ranked {
                candidate: band.remove(pick),
                priority,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(n: u8, region: &str, prefer: &[&str], cap: u32, ms: u64) -> Candidate {
        Candidate {
            peer: PeerId::random(),
            base: format!("http://m{n}"),
            region: region.into(),
            prefer: prefer.iter().map(|p| p.parse().unwrap()).collect(),
            capacity_mbps: cap,
            distance: Duration::from_millis(ms),
        }
    }

    fn bases(r: &[Ranked]) -> Vec<&str> {
        r.iter().map(|r| r.candidate.base.as_str()).collect()
    }

    #[test]
    fn prefix_then_region_then_distance() {
        let all = vec![
            cand(1, "", &[], 100, 1),
            cand(2, "DE", &[], 100, 50),
            cand(3, "", &["10.1.0.0/16"], 100, 200),
            cand(4, "de", &[], 100, 300),
        ];
        let client = Client {
            addr: Some("10.1.2.3".parse().unwrap()),
            region: Some("de".into()),
        };
        let r = rank(all.clone(), &client, &mut || 0.0);
        assert_eq!(
            bases(&r),
            ["http://m3", "http://m2", "http://m4", "http://m1"]
        );
        assert_eq!(
            r.iter().map(|r| r.priority).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // IPv4-mapped IPv6 client addresses match IPv4 prefixes.
        let mapped = Client {
            addr: Some("::ffff:10.1.2.3".parse().unwrap()),
            region: None,
        };
        assert_eq!(
            bases(&rank(all.clone(), &mapped, &mut || 0.0))[0],
            "http://m3"
        );
        // Nothing known of the client: distance alone.
        let r = rank(all, &Client::default(), &mut || 0.0);
        assert_eq!(
            bases(&r),
            ["http://m1", "http://m2", "http://m3", "http://m4"]
        );
    }

    #[test]
    fn near_equals_share_a_band_and_split_by_capacity() {
        let all = vec![
            cand(1, "", &[], 300, 2),
            cand(2, "", &[], 100, 5),
            cand(3, "", &[], 100, 40),
        ];
        let mut first = [0u32; 2];
        let mut seed = 12345u64;
        let mut random = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..4000 {
            let r = rank(all.clone(), &Client::default(), &mut random);
            assert_eq!(r[0].priority, 1);
            assert_eq!(r[1].priority, 1, "2 ms and 5 ms are near-equal");
            assert_eq!(r[2].candidate.base, "http://m3");
            assert_eq!(r[2].priority, 2);
            first[usize::from(r[0].candidate.base == "http://m2")] += 1;
        }
        // 300:100 capacity: m1 first about three times in four.
        let share = f64::from(first[0]) / 4000.0;
        assert!((0.70..0.80).contains(&share), "{share}");
    }
}
