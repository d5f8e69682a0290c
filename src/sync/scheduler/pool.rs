//! [`Pool`]: a set of chunk indices with O(1) insert, remove, membership
//! and "take any", the building block that keeps the scheduler's work per
//! event independent of the number of chunks.

const ABSENT: u32 = u32::MAX;

/// A set of indices below `n`, kept as a vector of members plus each
/// member's position in it.
pub(crate) struct Pool {
    items: Vec<u32>,
    pos: Vec<u32>,
}

impl Pool {
    /// The empty set over `0..n`.
    pub fn new(n: usize) -> Self {
        Pool {
            items: Vec::new(),
            pos: vec![ABSENT; n],
        }
    }

    /// Every index of `0..n`, in a random order (so "take any" differs from
    /// one node to the next: mirrors that start together ask the source for
    /// different chunks).
    pub fn full_shuffled(n: usize) -> Self {
        use rand::seq::SliceRandom;
        let mut items: Vec<u32> = (0..n as u32).collect();
        items.shuffle(&mut rand::rng());
        let mut pos = vec![ABSENT; n];
        for (k, &i) in items.iter().enumerate() {
            pos[i as usize] = k as u32;
        }
        Pool { items, pos }
    }

    pub fn contains(&self, i: u32) -> bool {
        self.pos[i as usize] != ABSENT
    }

    /// Adds `i`; false if it was there.
    pub fn insert(&mut self, i: u32) -> bool {
        if self.contains(i) {
            return false;
        }
        self.pos[i as usize] = self.items.len() as u32;
        self.items.push(i);
        true
    }

    /// Removes `i`; false if it was not there.
    pub fn remove(&mut self, i: u32) -> bool {
        let p = self.pos[i as usize];
        if p == ABSENT {
            return false;
        }
        let last = self.items.pop().expect("a member");
        if last != i {
            self.items[p as usize] = last;
            self.pos[last as usize] = p;
        }
        self.pos[i as usize] = ABSENT;
        true
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The members, in no particular order.
    pub fn items(&self) -> &[u32] {
        &self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_membership() {
        let mut p = Pool::new(10);
        assert!(p.insert(3) && p.insert(7) && p.insert(1));
        assert!(!p.insert(7));
        assert!(p.remove(3));
        assert!(!p.remove(3));
        assert!(p.contains(7) && p.contains(1) && !p.contains(3));
        let mut items = p.items().to_vec();
        items.sort_unstable();
        assert_eq!(items, vec![1, 7]);
        let full = Pool::full_shuffled(100);
        assert_eq!(full.len(), 100);
        assert!((0..100).all(|i| full.contains(i)));
        assert_ne!(full.items(), (0..100).collect::<Vec<u32>>(), "shuffled");
    }
}
