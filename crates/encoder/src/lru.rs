//! A small least-recently-used map: the per-backend caches of models and indexes keep at most
//! a configured number of entries. A linear scan finds the oldest entry; caches hold a handful.

use std::collections::HashMap;
use std::hash::Hash;

pub struct Lru<K, V> {
    entries: HashMap<K, (u64, V)>,
    clock: u64,
}

impl<K: Eq + Hash + Clone, V> Default for Lru<K, V> {
    fn default() -> Self {
        Lru {
            entries: HashMap::new(),
            clock: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V> Lru<K, V> {
    /// The entry for `key`, marked as just used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(used, v)| {
            *used = clock;
            v
        })
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(_, v)| v)
    }

    /// Inserts `value`, first dropping the least recently used entries so that at most
    /// `capacity` remain.
    pub fn insert(&mut self, key: K, value: V, capacity: usize) {
        self.entries.remove(&key);
        while self.entries.len() >= capacity.max(1) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
        self.clock += 1;
        self.entries.insert(key, (self.clock, value));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_least_recently_used() {
        let mut lru = Lru::default();
        lru.insert("a", 1, 2);
        lru.insert("b", 2, 2);
        assert_eq!(lru.get_mut(&"a"), Some(&mut 1)); // a is now newer than b
        lru.insert("c", 3, 2);
        assert!(lru.contains_key(&"a") && lru.contains_key(&"c") && !lru.contains_key(&"b"));
        lru.insert("d", 4, 1);
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.get(&"d"), Some(&4));
        assert_eq!(lru.remove(&"d"), Some(4));
        assert!(lru.is_empty());
    }
}
