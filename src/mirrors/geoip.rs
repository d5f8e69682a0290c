//! The client's country from a MaxMind database file (GeoIP2 or GeoLite2
//! Country or City, `.mmdb`), when the operator configures one: its ISO
//! 3166-1 code is the client's region, compared with mirrors' region
//! labels without regard to case.

use std::net::IpAddr;
use std::path::Path;

/// A GeoIP database, read into memory once.
pub struct GeoIp(maxminddb::Reader<Vec<u8>>);

/// The database could not be read.
#[derive(Debug, thiserror::Error)]
#[error("GeoIP database {path}: {why}")]
pub struct GeoIpError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub why: String,
}

impl GeoIp {
    /// Opens a `.mmdb` file.
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        maxminddb::Reader::open_readfile(path)
            .map(GeoIp)
            .map_err(|e| GeoIpError {
                path: path.display().to_string(),
                why: e.to_string(),
            })
    }

    /// A database from its bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoIp, GeoIpError> {
        maxminddb::Reader::from_source(bytes)
            .map(GeoIp)
            .map_err(|e| GeoIpError {
                path: "(memory)".into(),
                why: e.to_string(),
            })
    }

    /// The country code of `ip`, if the database knows it.
    pub fn region(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        let found = self.0.lookup(ip).ok()?;
        let code: Option<&str> = found
            .decode_path(&maxminddb::path!["country", "iso_code"])
            .ok()?;
        code.map(str::to_string)
    }
}

/// A minimal IPv4 MaxMind database writer, for tests: each network maps
/// to `{"country": {"iso_code": <code>}}`.
#[cfg(test)]
pub(crate) fn test_db(networks: &[(ipnet::Ipv4Net, &str)]) -> Vec<u8> {
    #[derive(Clone, Copy)]
    enum Rec {
        Empty,
        Node(u32),
        Data(u32),
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        out.push(0x40 | s.len() as u8);
        out.extend(s.as_bytes());
    }
    fn uint(out: &mut Vec<u8>, ty: u8, bytes: &[u8]) {
        out.push((ty << 5) | bytes.len() as u8);
        out.extend(bytes);
    }
    let mut data = Vec::new();
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty; 2]];
    for (net, code) in networks {
        let offset = data.len() as u32;
        data.push(0xe1);
        string(&mut data, "country");
        data.push(0xe1);
        string(&mut data, "iso_code");
        string(&mut data, code);
        let bits = u32::from(net.network());
        let mut node = 0usize;
        for i in 0..net.prefix_len() {
            let bit = ((bits >> (31 - i)) & 1) as usize;
            if i + 1 == net.prefix_len() {
                nodes[node][bit] = Rec::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(n) => n as usize,
                    _ => {
                        nodes.push([Rec::Empty; 2]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n as u32);
                        n
                    }
                };
            }
        }
    }
    let count = nodes.len() as u32;
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => count,
                Rec::Node(i) => i,
                Rec::Data(off) => count + 16 + off,
            };
            out.extend(v.to_be_bytes());
        }
    }
    out.extend([0u8; 16]);
    out.extend(&data);
    out.extend(b"\xab\xcd\xefMaxMind.com");
    out.push(0xe9);
    string(&mut out, "node_count");
    uint(&mut out, 6, &count.to_be_bytes());
    string(&mut out, "record_size");
    uint(&mut out, 5, &32u16.to_be_bytes());
    string(&mut out, "ip_version");
    uint(&mut out, 5, &4u16.to_be_bytes());
    string(&mut out, "database_type");
    string(&mut out, "Test-Country");
    string(&mut out, "languages");
    out.extend([0x00, 0x04]);
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, &2u16.to_be_bytes());
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, &0u16.to_be_bytes());
    string(&mut out, "build_epoch");
    out.extend([0x08, 0x02]);
    out.extend(1_700_000_000u64.to_be_bytes());
    string(&mut out, "description");
    out.push(0xe0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_by_address() {
        let db = test_db(&[
            ("127.0.0.3/32".parse().unwrap(), "DE"),
            ("10.0.0.0/8".parse().unwrap(), "FR"),
        ]);
        let g = GeoIp::from_bytes(db).unwrap();
        assert_eq!(
            g.region("127.0.0.3".parse().unwrap()).as_deref(),
            Some("DE")
        );
        assert_eq!(g.region("10.9.8.7".parse().unwrap()).as_deref(), Some("FR"));
        assert_eq!(
            g.region("::ffff:10.9.8.7".parse().unwrap()).as_deref(),
            Some("FR")
        );
        assert_eq!(g.region("127.0.0.4".parse().unwrap()), None);
        assert!(GeoIp::from_bytes(b"not a database".to_vec()).is_err());
    }
}
