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
    use rand::{RngCore, SeedableRng};

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
