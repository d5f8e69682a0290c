//! Recycled chunk-sized buffers for the byte path.
//!
//! A chunk body crosses the process in one buffer: read from a segment file
//! (or a stream), sent (or hashed and written), then dropped. Taking a fresh
//! allocation for each one costs as much as a copy of the chunk again: the
//! allocator zeroes it or the kernel faults in and clears fresh pages. So
//! bodies are read into buffers taken from this pool, and given back once
//! their bytes are sent or written.
//!
//! Buffers are kept by size class (powers of two from 64 KiB to
//! [`MAX_CLASS`]), so a chunk of 1.3 MiB takes a 2 MiB buffer and never
//! more than twice its size. Chunks under [`SMALL`] get plain allocations of
//! their own size: the allocator serves those cheaply, and a 64 KiB buffer
//! for each 200-byte chunk of a tree of small files would multiply the
//! memory of every chunk in flight by hundreds. The pool keeps at most [`POOL_BYTES`] of idle
//! buffers in all: beyond that, given buffers are freed.
//!
//! A taken buffer holds the bytes of an earlier chunk (it is not zeroed):
//! the caller overwrites all of it before anything reads it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::task::lock;

/// Smallest size class.
const MIN_CLASS: usize = 64 << 10;
/// Chunks shorter than this are not pooled.
const SMALL: usize = MIN_CLASS / 2;
/// Largest size class: the largest chunk the protocol carries.
pub const MAX_CLASS: usize = crate::chunk::MAX_CHUNK_LEN as usize;
/// Number of size classes (64 KiB .. 8 MiB).
const CLASSES: usize = (MAX_CLASS / MIN_CLASS).trailing_zeros() as usize + 1;
/// Idle bytes (by capacity) the pool keeps at most: a few write batches'
/// worth, so a download's buffers come round again instead of being freed.
pub const POOL_BYTES: usize = 32 << 20;

/// Idle buffers by size class, and their total capacity.
struct Pool {
    classes: [Mutex<Vec<Vec<u8>>>; CLASSES],
    idle: AtomicUsize,
}

static POOL: Pool = Pool {
    classes: [const { Mutex::new(Vec::new()) }; CLASSES],
    idle: AtomicUsize::new(0),
};

/// The class whose buffers hold at least `len` bytes, if any.
fn class_for(len: usize) -> Option<usize> {
    if !(SMALL..=MAX_CLASS).contains(&len) {
        return None;
    }
    let size = len.max(MIN_CLASS).next_power_of_two();
    Some((size / MIN_CLASS).trailing_zeros() as usize)
}

/// The class a buffer of `capacity` belongs to: the largest whose size it
/// holds.
fn class_of(capacity: usize) -> Option<usize> {
    if capacity < MIN_CLASS {
        return None;
    }
    let c = (capacity / MIN_CLASS).ilog2() as usize;
    Some(c.min(CLASSES - 1))
}

/// Bytes of a buffer of class `c`.
fn class_size(c: usize) -> usize {
    MIN_CLASS << c
}

/// An idle buffer of at least `len` bytes, resized to `len`, if the pool
/// has one. Its bytes are stale: overwrite them all.
pub fn reuse(len: usize) -> Option<Vec<u8>> {
    let c = class_for(len)?;
    // The exact class, else one class up (at most twice the memory again).
    for k in [c, c + 1] {
        if k >= CLASSES {
            break;
        }
        let buf = lock(&POOL.classes[k]).pop();
        if let Some(mut buf) = buf {
            POOL.idle.fetch_sub(buf.capacity(), Ordering::Relaxed);
            if buf.len() < len {
                // Only the part never written before is zeroed.
                buf.resize(len, 0);
            } else {
                buf.truncate(len);
            }
            return Some(buf);
        }
    }
    None
}

/// A buffer of `len` bytes: a recycled one, else a new one sized to its
/// class (so it can be recycled for any chunk of that class later).
pub fn take(len: usize) -> Vec<u8> {
    if let Some(buf) = reuse(len) {
        return buf;
    }
    let cap = class_for(len).map_or(len, class_size);
    let mut buf = Vec::with_capacity(cap);
    buf.resize(len, 0);
    buf
}

/// Gives a buffer back for reuse (or frees it if the pool is full or the
/// buffer is not chunk-sized).
pub fn give(buf: Vec<u8>) {
    let Some(c) = class_of(buf.capacity()) else {
        return;
    };
    if buf.capacity() > 2 * MAX_CLASS {
        return;
    }
    let cap = buf.capacity();
    if POOL.idle.fetch_add(cap, Ordering::Relaxed) + cap > POOL_BYTES {
        POOL.idle.fetch_sub(cap, Ordering::Relaxed);
        return;
    }
    lock(&POOL.classes[c]).push(buf);
}

/// A pooled buffer that goes back to the pool when the last [`Bytes`]
/// pointing into it is dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// Wraps a (pooled) buffer as [`Bytes`] without copying; the buffer is given
/// back to the pool once every clone of it is dropped.
pub fn into_bytes(buf: Vec<u8>) -> Bytes {
    Bytes::from_owner(Pooled(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_chunk_size() {
        assert_eq!(class_for(1), None, "small chunks are not pooled");
        assert_eq!(class_for(SMALL - 1), None);
        assert_eq!(class_for(SMALL), Some(0));
        assert_eq!(class_for(MIN_CLASS), Some(0));
        assert_eq!(class_for(MIN_CLASS + 1), Some(1));
        assert_eq!(class_for(MAX_CLASS), Some(CLASSES - 1));
        assert_eq!(class_for(MAX_CLASS + 1), None);
        for len in [
            SMALL,
            MIN_CLASS,
            300 << 10,
            1 << 20,
            (1 << 20) + 7,
            MAX_CLASS,
        ] {
            let c = class_for(len).unwrap();
            assert!(class_size(c) >= len && class_size(c) < 2 * len.max(MIN_CLASS));
            assert_eq!(class_of(class_size(c)), Some(c));
        }
        assert_eq!(class_of(MIN_CLASS - 1), None);
        assert_eq!(class_of(3 * MIN_CLASS), Some(1));
    }

    #[test]
    fn a_small_chunk_takes_only_its_own_size() {
        let buf = take(200);
        assert_eq!(buf.len(), 200);
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
        give(buf);
        assert!(reuse(200).is_none());
    }

    #[test]
    fn a_given_buffer_is_taken_again_with_the_asked_length() {
        // A size no other test of this process uses, so the class is ours.
        let len = (5 << 20) + 123;
        let mut buf = take(len);
        assert_eq!(buf.len(), len);
        let cap = buf.capacity();
        assert!(cap >= len);
        buf[0] = 7;
        let ptr = buf.as_ptr();
        into_bytes(buf); // dropped at once: back to the pool
        let again = reuse(len - 10).expect("the buffer came back");
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again.len(), len - 10);
        assert_eq!(again.capacity(), cap);
        give(again);
        let longer = reuse(len + 5).expect("the buffer came back");
        assert_eq!(longer.len(), len + 5);
        assert_eq!(&longer[len - 10..], &[0u8; 15][..], "grown part is zeroed");
    }
}
