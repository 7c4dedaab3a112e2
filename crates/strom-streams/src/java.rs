//! The few pieces of Java's collections that Kafka's `describe()` text
//! depends on, reproduced so that our text is Kafka's byte for byte:
//!
//! - `String.hashCode` and `java.util.HashMap`'s bucket order, because
//!   `InternalTopologyBuilder.describeSubtopology` connects nodes while
//!   iterating a `HashMap`, and prints source topics and store names from a
//!   `HashSet`;
//! - `java.util.TreeMap`'s red-black insertion, because each node's
//!   predecessors and successors are `TreeSet`s ordered by a comparator
//!   (sub-tree size, then name) whose sizes change *after* insertion, so the
//!   printed order depends on the tree's shape at each insertion.
//!
//! Not reproduced: treeified HashMap bins (8+ colliding names in one bucket),
//! which Kafka's own topologies never reach.

use std::cmp::Ordering;

/// Java's `String.hashCode` over UTF-16 code units.
pub(crate) fn string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Java's `String.compareTo`: lexicographic over UTF-16 code units.
pub(crate) fn compare_strings(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// `HashMap.hash` spread, then the bucket in a table of `capacity` (a power of two).
fn bucket(s: &str, capacity: u32) -> u32 {
    let h = string_hash(s).cast_unsigned();
    (h ^ (h >> 16)) & (capacity - 1)
}

/// Stable sort by bucket: iteration order of a `HashMap`/`HashSet` whose
/// table has `capacity` buckets and whose keys went in in `items` order
/// (resizing keeps the relative order of keys within a bucket).
fn bucket_order(items: &[String], capacity: u32) -> Vec<String> {
    let mut unique: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !unique.contains(item) {
            unique.push(item.clone());
        }
    }
    unique.sort_by_key(|s| bucket(s, capacity));
    unique
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Iteration order of `new HashMap<>()` / `new HashSet<>()` after putting
/// `items` in order: the table starts at 16 buckets and doubles whenever the
/// size exceeds 3/4 of it.
pub(crate) fn default_hash_order(items: &[String]) -> Vec<String> {
    let n = len_u32(items.len());
    let mut capacity: u32 = 16;
    while n > capacity / 4 * 3 && capacity < 1 << 30 {
        capacity *= 2;
    }
    bucket_order(items, capacity)
}

/// Iteration order of `new HashSet<>(collection)` over `items` (in the
/// collection's iteration order): the table is sized for the collection up
/// front, `tableSizeFor(max(size / .75f + 1, 16))`.
pub(crate) fn copied_hash_set_order(items: &[String]) -> Vec<String> {
    let n = len_u32(items.len());
    let wanted = (n.saturating_mul(4) / 3).saturating_add(1).max(16);
    let capacity = wanted
        .checked_next_power_of_two()
        .unwrap_or(1 << 30)
        .min(1 << 30);
    bucket_order(items, capacity)
}

/// Java's `AbstractCollection.toString`: `[a, b]`.
pub(crate) fn collection_to_string(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

#[derive(Debug, Clone)]
struct TreeNode {
    key: usize,
    left: Option<usize>,
    right: Option<usize>,
    parent: Option<usize>,
    red: bool,
}

/// A `java.util.TreeSet` of small integers under a caller's comparator,
/// inserted exactly as `TreeMap.put` and `fixAfterInsertion` do, so that the
/// in-order result is Java's even when the comparator's answers drift.
#[derive(Debug, Clone, Default)]
pub(crate) struct TreeSet {
    nodes: Vec<TreeNode>,
    root: Option<usize>,
}

impl TreeSet {
    /// Inserts `key`; false if the comparator found it already present.
    pub(crate) fn insert(
        &mut self,
        key: usize,
        compare: &dyn Fn(usize, usize) -> Ordering,
    ) -> bool {
        let Some(mut at) = self.root else {
            self.nodes.push(TreeNode {
                key,
                left: None,
                right: None,
                parent: None,
                red: false,
            });
            self.root = Some(self.nodes.len() - 1);
            return true;
        };
        let (parent, went_left) = loop {
            match compare(key, self.nodes[at].key) {
                Ordering::Less => match self.nodes[at].left {
                    Some(left) => at = left,
                    None => break (at, true),
                },
                Ordering::Greater => match self.nodes[at].right {
                    Some(right) => at = right,
                    None => break (at, false),
                },
                Ordering::Equal => return false,
            }
        };
        let entry = self.nodes.len();
        self.nodes.push(TreeNode {
            key,
            left: None,
            right: None,
            parent: Some(parent),
            red: false,
        });
        if went_left {
            self.nodes[parent].left = Some(entry);
        } else {
            self.nodes[parent].right = Some(entry);
        }
        self.fix_after_insertion(entry);
        true
    }

    /// The keys in order.
    pub(crate) fn keys(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = Vec::new();
        let mut at = self.root;
        while at.is_some() || !stack.is_empty() {
            while let Some(n) = at {
                stack.push(n);
                at = self.nodes[n].left;
            }
            if let Some(n) = stack.pop() {
                out.push(self.nodes[n].key);
                at = self.nodes[n].right;
            }
        }
        out
    }

    fn parent_of(&self, n: Option<usize>) -> Option<usize> {
        n.and_then(|n| self.nodes[n].parent)
    }

    fn left_of(&self, n: Option<usize>) -> Option<usize> {
        n.and_then(|n| self.nodes[n].left)
    }

    fn right_of(&self, n: Option<usize>) -> Option<usize> {
        n.and_then(|n| self.nodes[n].right)
    }

    /// Java's `colorOf`: null is black.
    fn is_red(&self, n: Option<usize>) -> bool {
        n.is_some_and(|n| self.nodes[n].red)
    }

    fn set_red(&mut self, n: Option<usize>, red: bool) {
        if let Some(n) = n {
            self.nodes[n].red = red;
        }
    }

    fn rotate_left(&mut self, p: Option<usize>) {
        let Some(p) = p else { return };
        let Some(r) = self.nodes[p].right else { return };
        self.nodes[p].right = self.nodes[r].left;
        if let Some(rl) = self.nodes[r].left {
            self.nodes[rl].parent = Some(p);
        }
        self.nodes[r].parent = self.nodes[p].parent;
        match self.nodes[p].parent {
            None => self.root = Some(r),
            Some(pp) if self.nodes[pp].left == Some(p) => self.nodes[pp].left = Some(r),
            Some(pp) => self.nodes[pp].right = Some(r),
        }
        self.nodes[r].left = Some(p);
        self.nodes[p].parent = Some(r);
    }

    fn rotate_right(&mut self, p: Option<usize>) {
        let Some(p) = p else { return };
        let Some(l) = self.nodes[p].left else { return };
        self.nodes[p].left = self.nodes[l].right;
        if let Some(lr) = self.nodes[l].right {
            self.nodes[lr].parent = Some(p);
        }
        self.nodes[l].parent = self.nodes[p].parent;
        match self.nodes[p].parent {
            None => self.root = Some(l),
            Some(pp) if self.nodes[pp].right == Some(p) => self.nodes[pp].right = Some(l),
            Some(pp) => self.nodes[pp].left = Some(l),
        }
        self.nodes[l].right = Some(p);
        self.nodes[p].parent = Some(l);
    }

    /// `TreeMap.fixAfterInsertion`, line for line.
    fn fix_after_insertion(&mut self, entry: usize) {
        let mut x = Some(entry);
        self.set_red(x, true);
        while x.is_some() && x != self.root && self.is_red(self.parent_of(x)) {
            let parent = self.parent_of(x);
            let grandparent = self.parent_of(parent);
            if parent == self.left_of(grandparent) {
                let uncle = self.right_of(grandparent);
                if self.is_red(uncle) {
                    self.set_red(parent, false);
                    self.set_red(uncle, false);
                    self.set_red(grandparent, true);
                    x = grandparent;
                } else {
                    if x == self.right_of(parent) {
                        x = parent;
                        self.rotate_left(x);
                    }
                    let parent = self.parent_of(x);
                    self.set_red(parent, false);
                    self.set_red(self.parent_of(parent), true);
                    self.rotate_right(self.parent_of(parent));
                }
            } else {
                let uncle = self.left_of(grandparent);
                if self.is_red(uncle) {
                    self.set_red(parent, false);
                    self.set_red(uncle, false);
                    self.set_red(grandparent, true);
                    x = grandparent;
                } else {
                    if x == self.left_of(parent) {
                        x = parent;
                        self.rotate_right(x);
                    }
                    let parent = self.parent_of(x);
                    self.set_red(parent, false);
                    self.set_red(self.parent_of(parent), true);
                    self.rotate_left(self.parent_of(parent));
                }
            }
        }
        let root = self.root;
        self.set_red(root, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_hash_is_javas() {
        // "hello".hashCode() == 99162322, "".hashCode() == 0,
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(string_hash("hello"), 99_162_322);
        assert_eq!(string_hash(""), 0);
        assert_eq!(string_hash("polygenelubricants"), i32::MIN);
    }

    #[test]
    fn tree_set_sorts_under_a_consistent_comparator() {
        let mut set = TreeSet::default();
        for k in [5, 3, 8, 1, 4, 7, 9, 2, 6, 0] {
            assert!(set.insert(k, &|a, b| a.cmp(&b)));
        }
        assert!(!set.insert(4, &|a, b| a.cmp(&b)));
        assert_eq!(set.keys(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn hash_set_order_follows_buckets() {
        // Single-letter strings hash to their code unit: "b" (98) sorts after "a" (97).
        let order = copied_hash_set_order(&["b".into(), "a".into()]);
        assert_eq!(order, ["a", "b"]);
        assert_eq!(collection_to_string(&order), "[a, b]");
        assert_eq!(collection_to_string(&[]), "[]");
    }
}
