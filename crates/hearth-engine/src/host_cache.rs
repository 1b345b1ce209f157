//! Conversations' KV saved in host memory, found by token blocks.
//!
//! Each entry is indexed under the chain hash of every full block of its tokens
//! (`h_k = hash(h_{k-1}, block_k)`, as vLLM's prefix caching keys blocks): the longest cached
//! prefix of a prompt is found by walking the prompt's blocks — one hash lookup per
//! `BLOCK_TOKENS` tokens, however many entries are held — and then checked token by token
//! among the few entries that share the deepest block (a hash collision costs a comparison,
//! never a wrong restore). Bounded in bytes, least recently used out.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Tokens per block of the hash chain. Entries are at least 64 tokens (see the scheduler's
/// `HOST_MIN_TOKENS`), so every entry has blocks; the part of a prompt past its last full
/// block is still matched exactly among the candidates.
pub(crate) const BLOCK_TOKENS: usize = 16;

type EntryId = u64;

struct Entry<S> {
    tokens: Vec<u32>,
    snapshot: S,
    bytes: usize,
    used_at: u64,
}

pub(crate) struct HostCache<S> {
    entries: HashMap<EntryId, Entry<S>>,
    /// Chain hash of a block prefix → the entries whose tokens begin with it.
    index: HashMap<u64, Vec<EntryId>>,
    next_id: EntryId,
    clock: u64,
    bytes: usize,
    limit: usize,
}

/// The chain hashes of `tokens`' full blocks, in order.
fn chain(tokens: &[u32]) -> impl Iterator<Item = u64> + '_ {
    tokens
        .chunks_exact(BLOCK_TOKENS)
        .scan(0u64, |previous, block| {
            let mut hasher = DefaultHasher::new();
            previous.hash(&mut hasher);
            block.hash(&mut hasher);
            *previous = hasher.finish();
            Some(*previous)
        })
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<S> HostCache<S> {
    /// A cache of at most `limit` bytes (0: nothing is kept).
    pub(crate) fn new(limit: usize) -> Self {
        HostCache {
            entries: HashMap::new(),
            index: HashMap::new(),
            next_id: 0,
            clock: 0,
            bytes: 0,
            limit,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.limit > 0
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries sharing the deepest block of `tokens` that any entry shares.
    fn deepest_candidates(&self, tokens: &[u32]) -> &[EntryId] {
        let mut found: &[EntryId] = &[];
        for hash in chain(tokens) {
            match self.index.get(&hash) {
                Some(ids) if !ids.is_empty() => found = ids,
                _ => break,
            }
        }
        found
    }

    /// The entry holding the longest prefix of `prompt` (at least one block), and how many
    /// tokens of `prompt` it holds.
    pub(crate) fn longest(&self, prompt: &[u32]) -> Option<(EntryId, usize)> {
        self.deepest_candidates(prompt)
            .iter()
            .map(|&id| (id, common_prefix(&self.entries[&id].tokens, prompt)))
            .max_by_key(|&(id, n)| (n, self.entries[&id].used_at))
    }

    /// Whether some entry already holds all of `tokens`.
    pub(crate) fn holds(&self, tokens: &[u32]) -> bool {
        let Some(last) = chain(tokens).last() else {
            return false;
        };
        self.index.get(&last).is_some_and(|ids| {
            ids.iter()
                .any(|id| self.entries[id].tokens.starts_with(tokens))
        })
    }

    /// Mark an entry used now, so eviction takes others first.
    pub(crate) fn touch(&mut self, id: EntryId) {
        self.clock += 1;
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.used_at = self.clock;
        }
    }

    /// Tokens an entry holds (0 if it is gone).
    pub(crate) fn tokens(&self, id: EntryId) -> usize {
        self.entries.get(&id).map_or(0, |e| e.tokens.len())
    }

    pub(crate) fn get(&self, id: EntryId) -> Option<&S> {
        self.entries.get(&id).map(|e| &e.snapshot)
    }

    /// Keep `snapshot` of `tokens` (`bytes` large): entries it extends are superseded, the
    /// least recently used go until it fits. False if it can never fit.
    pub(crate) fn insert(&mut self, tokens: Vec<u32>, snapshot: S, bytes: usize) -> bool {
        if bytes > self.limit || tokens.len() < BLOCK_TOKENS {
            return false;
        }
        let hashes: Vec<u64> = chain(&tokens).collect();
        let superseded: Vec<EntryId> = hashes
            .iter()
            .filter_map(|hash| self.index.get(hash))
            .flatten()
            .copied()
            .filter(|id| tokens.starts_with(&self.entries[id].tokens))
            .collect();
        for id in superseded {
            self.remove(id);
        }
        while self.bytes + bytes > self.limit {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used_at)
                .map(|(&id, _)| id)
                .expect("bytes are held, so entries are");
            self.remove(oldest);
        }
        let id = self.next_id;
        self.next_id += 1;
        for hash in hashes {
            self.index.entry(hash).or_default().push(id);
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(
            id,
            Entry {
                tokens,
                snapshot,
                bytes,
                used_at: self.clock,
            },
        );
        true
    }

    fn remove(&mut self, id: EntryId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        self.bytes -= entry.bytes;
        for hash in chain(&entry.tokens) {
            if let Some(ids) = self.index.get_mut(&hash) {
                ids.retain(|&other| other != id);
                if ids.is_empty() {
                    self.index.remove(&hash);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| seed * 1000 + i).collect()
    }

    fn extend(base: &[u32], seed: u32, len: usize) -> Vec<u32> {
        let mut t = base.to_vec();
        t.extend(tokens(seed, len));
        t
    }

    #[test]
    fn finds_the_longest_prefix_also_inside_a_block() {
        let mut cache = HostCache::new(1 << 20);
        let system = tokens(1, 40);
        let a = extend(&system, 2, 30); // 70 tokens
        let b = extend(&system, 3, 50); // 90 tokens
        assert!(cache.insert(a.clone(), "a", 70));
        assert!(cache.insert(b.clone(), "b", 90));
        // A follow-up of b: all 90 tokens, the last 10 past b's last full block.
        let (id, n) = cache.longest(&extend(&b, 4, 20)).unwrap();
        assert_eq!((cache.get(id), n), (Some(&"b"), 90));
        // Something new after the shared system prompt: 40 tokens, from either entry.
        let (_, n) = cache.longest(&extend(&system, 5, 30)).unwrap();
        assert_eq!(n, 40);
        // Shorter than a block in common: nothing.
        assert!(cache.longest(&extend(&system[..10], 6, 60)).is_none());
        assert!(cache.holds(&a) && cache.holds(&a[..64]) && !cache.holds(&extend(&a, 7, 16)));
    }

    #[test]
    fn an_entry_it_extends_is_superseded_and_the_index_forgets_it() {
        let mut cache = HostCache::new(1 << 20);
        let turn1 = tokens(1, 64);
        let turn2 = extend(&turn1, 2, 40);
        cache.insert(turn1.clone(), 1, 64);
        cache.insert(turn2.clone(), 2, 104);
        assert_eq!((cache.len(), cache.bytes()), (1, 104));
        let (id, n) = cache.longest(&turn1).unwrap();
        assert_eq!((cache.get(id), n), (Some(&2), 64));
        // Every block hash of the superseded entry now names only the new one.
        assert!(cache.index.values().all(|ids| ids.len() == 1));
    }

    #[test]
    fn stays_within_its_bytes_least_recently_used_out() {
        let mut cache = HostCache::new(250);
        let (a, b, c) = (tokens(1, 64), tokens(2, 64), tokens(3, 64));
        cache.insert(a.clone(), 'a', 100);
        cache.insert(b.clone(), 'b', 100);
        let (id_a, _) = cache.longest(&a).unwrap();
        cache.touch(id_a); // b is now the least recently used
        cache.insert(c.clone(), 'c', 100);
        assert!(cache.bytes() <= 250);
        assert!(cache.longest(&b).is_none(), "b was evicted");
        assert!(cache.longest(&a).is_some() && cache.longest(&c).is_some());
        assert!(
            !cache.insert(tokens(4, 64), 'd', 251),
            "larger than the whole cache"
        );
        // Nothing evicted leaves a hash behind.
        let indexed: usize = cache.index.values().map(Vec::len).sum();
        assert_eq!(indexed, 2 * (64 / BLOCK_TOKENS));
    }

    #[test]
    fn a_hash_collision_costs_a_comparison_not_a_wrong_match() {
        let mut cache = HostCache::new(1 << 20);
        let a = tokens(1, 64);
        cache.insert(a.clone(), 'a', 64);
        // Forge a collision: index a different prompt's first block hash under a's id.
        let other = tokens(9, 64);
        let forged = chain(&other).next().unwrap();
        let id = cache.longest(&a).unwrap().0;
        cache.index.entry(forged).or_default().push(id);
        assert_eq!(cache.longest(&other).map(|(_, n)| n), Some(0));
    }
}
