//! The one rule every per-instance map of callers follows to stay bounded.
//!
//! A Lambda instance remembers a little about each caller it served (rate-limit
//! leases and last-seen TATs, admitted callers, verified tokens) so a returning
//! caller skips work. Each map has a capacity; when it is full and a new caller
//! arrives, the entries no longer live are dropped, and if every entry is still
//! live the map starts over. Starting over is rare (a flood of distinct callers
//! in one instance) and only costs each forgotten caller the work the map saved
//! once; an LRU would keep the hot callers but costs bookkeeping on every hit,
//! which is the path these maps exist to make cheap.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Makes room in `map` for inserting `key`: only when the map holds
/// `capacity` entries or more and `key` is new, the entries `live` rejects are
/// dropped, and if that left it full, every entry is.
pub fn make_room<K, V, Q>(
    map: &mut HashMap<K, V>,
    key: &Q,
    capacity: usize,
    mut live: impl FnMut(&V) -> bool,
) where
    K: Borrow<Q> + Eq + Hash,
    Q: Eq + Hash + ?Sized,
{
    if map.len() < capacity || map.contains_key(key) {
        return;
    }
    map.retain(|_, value| live(value));
    if map.len() >= capacity {
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries are expiry times; an entry is live while it is at least 10.
    fn full() -> HashMap<String, u64> {
        HashMap::from([
            ("a".to_owned(), 5),
            ("b".to_owned(), 20),
            ("c".to_owned(), 30),
        ])
    }

    #[test]
    fn a_map_with_room_is_left_alone() {
        let mut map = full();
        make_room(&mut map, "d", 4, |expiry| *expiry >= 10);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn a_known_key_needs_no_room() {
        let mut map = full();
        make_room(&mut map, "a", 3, |expiry| *expiry >= 10);
        assert_eq!(map, full());
    }

    #[test]
    fn a_new_key_in_a_full_map_drops_what_is_no_longer_live() {
        let mut map = full();
        make_room(&mut map, "d", 3, |expiry| *expiry >= 10);
        let mut left: Vec<&str> = map.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["b", "c"]);
    }

    #[test]
    fn a_full_map_of_live_entries_starts_over() {
        let mut map = full();
        make_room(&mut map, "d", 3, |_| true);
        assert!(map.is_empty());
        // Over capacity (a capacity lowered since): the same.
        let mut map = full();
        make_room(&mut map, "d", 2, |expiry| *expiry >= 10);
        assert!(map.is_empty());
    }
}
