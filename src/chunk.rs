//! Content-defined chunking.
//!
//! Files are cut with FastCDC (the 2020 variant, normalisation level 1, gear
//! seed 0) so that an insertion in the middle of a large file moves only the
//! cut points around it, and a new version of an image shares most of its
//! chunks with the old one. The algorithm and its sizes are pinned in every
//! manifest ([`ChunkerParams`]) so all nodes agree on where cuts fall.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// Name of the only chunking algorithm this version understands.
pub const ALGORITHM: &str = "fastcdc-v2020-l1-s0";

/// Largest chunk any manifest may declare; bounds memory per chunk and
/// equals the chunk protocol's body limit, so every valid version can be
/// fetched over the network.
pub const MAX_CHUNK_LEN: u32 = 8 * 1024 * 1024;

/// The chunking algorithm and its size bounds, recorded in each manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Algorithm name, [`ALGORITHM`].
    pub algorithm: String,
    /// Smallest cut (except a file's last chunk).
    pub min: u32,
    /// Target average size.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: big enough that per-chunk overhead (index
    /// entries, requests) stays small, small enough that an edit costs little.
    fn default() -> Self {
        ChunkerParams {
            algorithm: ALGORITHM.to_string(),
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Whether this node can cut with these parameters (the algorithm is
    /// known and the sizes are within what FastCDC accepts).
    pub fn is_supported(&self) -> bool {
        use fastcdc::v2020 as f;
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        self.algorithm == ALGORITHM
            && (f::MINIMUM_MIN..=f::MINIMUM_MAX).contains(&min)
            && (f::AVERAGE_MIN..=f::AVERAGE_MAX).contains(&avg)
            && (f::MAXIMUM_MIN..=f::MAXIMUM_MAX).contains(&max)
            && self.max <= MAX_CHUNK_LEN
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0
    }
}

/// One cut piece of a file, with its id.
pub struct Chunk {
    /// blake3 of `data`.
    pub id: Hash,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Cuts a reader into chunks. `len_hint` is the file size when known: a file
/// no larger than the minimum chunk is one chunk, read without the chunker's
/// `max`-sized buffer, which matters for trees of many small files.
pub fn chunks<'a, R: Read + 'a>(
    mut reader: R,
    len_hint: Option<u64>,
    params: &ChunkerParams,
) -> Box<dyn Iterator<Item = io::Result<Chunk>> + 'a> {
    let small = len_hint.is_some_and(|n| n <= params.min as u64);
    if small {
        let mut data = Vec::with_capacity(len_hint.unwrap_or(0) as usize);
        return match reader.read_to_end(&mut data) {
            Ok(0) => Box::new(std::iter::empty()),
            // The file may have grown since it was measured: cut what we read.
            Ok(n) if n as u64 > params.min as u64 => cut_vec(data, params),
            Ok(_) => Box::new(std::iter::once(Ok(Chunk {
                id: Hash::of(&data),
                data,
            }))),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
    }
    Box::new(stream(reader, params))
}

fn cut_vec<'a>(
    data: Vec<u8>,
    params: &ChunkerParams,
) -> Box<dyn Iterator<Item = io::Result<Chunk>> + 'a> {
    Box::new(stream(io::Cursor::new(data), params))
}

fn stream<R: Read>(reader: R, params: &ChunkerParams) -> impl Iterator<Item = io::Result<Chunk>> {
    StreamCDC::with_level(
        reader,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        Normalization::Level1,
    )
    .map(|r| {
        let c = r.map_err(io::Error::from)?;
        Ok(Chunk {
            id: Hash::of(&c.data),
            data: c.data,
        })
    })
}

/// Bytes read per window by [`for_each_block`]: large enough to amortise
/// reads and thread hand-offs, small enough to keep memory flat.
pub const WINDOW: usize = 16 << 20;

/// A window of a file and the byte ranges of the chunks cut from it.
pub type Block = (Arc<Vec<u8>>, Vec<Range<usize>>);

/// Cuts a reader into chunks a window at a time and hands each window with
/// its chunk ranges to `f` (which hashes them, on another thread if it
/// likes). It makes exactly the cuts of [`chunks`] (a chunk is cut only when
/// at least `max` bytes follow its start, or at end of input), without the
/// per-chunk buffer shuffling of a streaming chunker.
pub fn for_each_block<R: Read>(
    mut reader: R,
    len_hint: Option<u64>,
    params: &ChunkerParams,
    mut f: impl FnMut(Block) -> io::Result<()>,
) -> io::Result<()> {
    let max = params.max as usize;
    let window = WINDOW.max(2 * max);
    let mut carry: Vec<u8> = Vec::new();
    let mut eof = false;
    while !eof || !carry.is_empty() {
        let mut buf = Vec::with_capacity(
            window.min(carry.len() + len_hint.unwrap_or(window as u64) as usize + 1),
        );
        buf.extend_from_slice(&carry);
        carry.clear();
        if !eof {
            // Appends what it reads, so nothing is zero-filled first.
            let want = window - buf.len();
            let n = (&mut reader).take(want as u64).read_to_end(&mut buf)?;
            eof = n < want;
        }
        if buf.is_empty() {
            break;
        }
        let cdc = FastCDC::with_level(
            &buf,
            params.min as usize,
            params.avg as usize,
            max,
            Normalization::Level1,
        );
        let mut ranges = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let remaining = buf.len() - pos;
            if !eof && remaining < max {
                break;
            }
            let (_, end) = cdc.cut(pos, remaining);
            ranges.push(pos..end);
            pos = end;
        }
        carry.extend_from_slice(&buf[pos..]);
        buf.truncate(pos);
        f((Arc::new(buf), ranges))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn cut(data: &[u8]) -> Vec<(Hash, usize)> {
        chunks(data, Some(data.len() as u64), &ChunkerParams::default())
            .map(|c| {
                let c = c.unwrap();
                (c.id, c.data.len())
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_input_within_bounds() {
        let data = random(20 << 20, 1);
        let p = ChunkerParams::default();
        let cs = cut(&data);
        assert_eq!(cs.iter().map(|c| c.1).sum::<usize>(), data.len());
        for (i, (_, len)) in cs.iter().enumerate() {
            assert!(*len <= p.max as usize);
            if i + 1 < cs.len() {
                assert!(*len >= p.min as usize);
            }
        }
        assert!(cs.len() > 5, "20 MiB should cut into several chunks");
    }

    #[test]
    fn insertion_changes_only_nearby_chunks() {
        let data = random(32 << 20, 2);
        let mut edited = data.clone();
        let at = 16 << 20;
        edited.splice(at..at, random(1000, 3));
        let a = cut(&data);
        let b = cut(&edited);
        let old: std::collections::HashSet<_> = a.iter().map(|c| c.0).collect();
        let changed = b.iter().filter(|c| !old.contains(&c.0)).count();
        assert!(changed <= 3, "{changed} of {} chunks changed", b.len());
    }

    #[test]
    fn small_and_empty_inputs() {
        assert!(cut(&[]).is_empty());
        let small = random(1000, 4);
        let cs = cut(&small);
        assert_eq!(cs, vec![(Hash::of(&small), 1000)]);
    }

    #[test]
    fn block_chunker_cuts_like_the_stream_chunker() {
        for (len, seed) in [(0usize, 5u64), (1000, 6), (300 << 10, 7), (37 << 20, 8)] {
            let data = random(len, seed);
            let mut blocks = Vec::new();
            for_each_block(
                &data[..],
                Some(len as u64),
                &ChunkerParams::default(),
                |(buf, cs)| {
                    for r in cs {
                        blocks.push((Hash::of(&buf[r.clone()]), r.len()));
                    }
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(blocks, cut(&data), "length {len}");
        }
    }

    /// Golden input: blake3 XOF output of a fixed context (no random
    /// generator whose algorithm could change), with a run of zeros in the
    /// middle so that cuts forced at `max` are covered too, and a length
    /// that crosses [`WINDOW`] and ends in a short chunk.
    fn golden_input() -> Vec<u8> {
        let xof = |part: &str, len: usize| {
            let mut v = vec![0u8; len];
            blake3::Hasher::new_derive_key("peermirror chunker golden input v1")
                .update(part.as_bytes())
                .finalize_xof()
                .fill(&mut v);
            v
        };
        let mut data = xof("head", 12 << 20);
        data.resize(21 << 20, 0);
        data.extend(xof("tail", (3 << 20) + 12_345));
        data
    }

    /// End offsets of the chunks of [`golden_input`] at the default
    /// parameters. Cut points are part of the manifest format: if a
    /// dependency upgrade moves one, every published version stops sharing
    /// chunks with what nodes cut afterwards, so this must never change
    /// silently. The three cuts 4 MiB apart are the ones forced in the run of
    /// zeros.
    const GOLDEN_CUTS: &[usize] = &[
        1_084_165, 2_188_052, 4_005_072, 5_137_612, 6_472_417, 7_685_319, 8_004_103, 8_480_051,
        9_105_908, 9_888_951, 11_149_481, 12_267_432, 16_461_736, 20_656_040, 22_802_532,
        24_205_892, 25_178_169,
    ];

    #[test]
    fn cuts_of_the_golden_input_are_pinned() {
        let data = golden_input();
        assert_eq!(
            Hash::of(&data).to_hex(),
            "005dc43da06d565cf1005f13be9493e9b1a5a6ddc755bd0166eb6e40ba40cef5",
            "the golden input itself changed"
        );
        let stream_cuts: Vec<usize> = cut(&data)
            .iter()
            .scan(0, |end, c| {
                *end += c.1;
                Some(*end)
            })
            .collect();
        let (mut block_cuts, mut offset) = (Vec::new(), 0);
        for_each_block(
            &data[..],
            Some(data.len() as u64),
            &ChunkerParams::default(),
            |(buf, cs)| {
                // Each window holds exactly the bytes its chunks cover.
                block_cuts.extend(cs.iter().map(|r| offset + r.end));
                offset += buf.len();
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(stream_cuts, GOLDEN_CUTS, "streaming chunker");
        assert_eq!(block_cuts, GOLDEN_CUTS, "window chunker");
    }

    #[test]
    fn default_params_are_supported() {
        assert!(ChunkerParams::default().is_supported());
        let bad = ChunkerParams {
            algorithm: "rabin".into(),
            ..Default::default()
        };
        assert!(!bad.is_supported());
    }
}
