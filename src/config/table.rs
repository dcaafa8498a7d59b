//! The snapshot's connection tables: small persistent hash tries of `Arc<Connection>`.
//!
//! A table is a trie over a 64-bit hash of the connection id, 16 children a level, whose leaves
//! are shared slices of at most [`LEAF_MAX`] `(hash, connection)` pairs. A put or delete copies
//! the path to one leaf (at most a few 16-slot branches and one leaf of ≤ 16 pointers) and
//! shares everything else with the previous snapshot, so a change costs about the same at 1k
//! and 100k connections. They replace `imbl` maps here because imbl's nodes are fixed-size
//! chunks (about 170 bytes an entry beyond the key at 100k); a leaf here costs 16 bytes an
//! entry, and a table of up to 16 connections is one leaf. The key is not stored: it is the
//! connection's own `connection_id`. [`Connections`] holds one integration's connections (ids
//! unique); [`ById`] holds every connection by id alone (an id may belong to several
//! integrations), for integration.app-style selectors.

use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};

use super::snapshot::Connection;

/// Entries in a leaf before it splits (unless every entry has the same hash).
const LEAF_MAX: usize = 16;
/// 4 bits of the hash a level: 16 levels use all 64.
const MAX_DEPTH: u32 = 16;

/// One hasher for the process: seeded at random, so the layout of a table cannot be chosen
/// from outside, and the same in every snapshot, so tables can share nodes.
static HASHER: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

fn hash(id: &str) -> u64 {
    HASHER.hash_one(id)
}

fn nibble(h: u64, depth: u32) -> usize {
    ((h >> (4 * depth)) & 0xf) as usize
}

type Entry = (u64, Arc<Connection>);

#[derive(Clone, Default)]
enum Node {
    #[default]
    Empty,
    Leaf(Arc<[Entry]>),
    Branch(Arc<[Node; 16]>),
}

impl Node {
    fn build(entries: Vec<Entry>, depth: u32) -> Node {
        if entries.is_empty() {
            return Node::Empty;
        }
        let same_hash = entries.iter().all(|e| e.0 == entries[0].0);
        if entries.len() <= LEAF_MAX || depth >= MAX_DEPTH || same_hash {
            return Node::Leaf(entries.into());
        }
        let mut buckets: [Vec<Entry>; 16] = Default::default();
        for e in entries {
            buckets[nibble(e.0, depth)].push(e);
        }
        Node::Branch(Arc::new(buckets.map(|b| Node::build(b, depth + 1))))
    }

    fn find(&self, h: u64, mut pred: impl FnMut(&Connection) -> bool) -> Option<&Arc<Connection>> {
        let mut node = self;
        let mut depth = 0;
        loop {
            match node {
                Node::Empty => return None,
                Node::Leaf(l) => return l.iter().find(|e| e.0 == h && pred(&e.1)).map(|e| &e.1),
                Node::Branch(b) => {
                    node = &b[nibble(h, depth)];
                    depth += 1;
                }
            }
        }
    }

    /// The leaf that holds every entry with hash `h`, if any.
    fn leaf(&self, h: u64) -> &[Entry] {
        let mut node = self;
        let mut depth = 0;
        loop {
            match node {
                Node::Empty => return &[],
                Node::Leaf(l) => return l,
                Node::Branch(b) => {
                    node = &b[nibble(h, depth)];
                    depth += 1;
                }
            }
        }
    }

    /// Inserts `conn`, replacing the entry `same` accepts; returns the replaced one.
    fn insert(
        &mut self,
        depth: u32,
        h: u64,
        conn: Arc<Connection>,
        same: &impl Fn(&Connection) -> bool,
    ) -> Option<Arc<Connection>> {
        match self {
            Node::Empty => {
                *self = Node::Leaf(Arc::from([(h, conn)]));
                None
            }
            Node::Leaf(l) => {
                let mut v: Vec<Entry> = l.to_vec();
                if let Some(e) = v.iter_mut().find(|e| e.0 == h && same(&e.1)) {
                    let old = std::mem::replace(&mut e.1, conn);
                    *self = Node::Leaf(v.into());
                    return Some(old);
                }
                v.push((h, conn));
                *self = Node::build(v, depth);
                None
            }
            // `make_mut` copies the branch only when another snapshot shares it.
            Node::Branch(b) => Arc::make_mut(b)[nibble(h, depth)].insert(depth + 1, h, conn, same),
        }
    }

    fn remove(
        &mut self,
        depth: u32,
        h: u64,
        pred: &impl Fn(&Connection) -> bool,
    ) -> Option<Arc<Connection>> {
        match self {
            Node::Empty => None,
            Node::Leaf(l) => {
                let at = l.iter().position(|e| e.0 == h && pred(&e.1))?;
                let mut v: Vec<Entry> = l.to_vec();
                let (_, old) = v.remove(at);
                *self = if v.is_empty() {
                    Node::Empty
                } else {
                    Node::Leaf(v.into())
                };
                Some(old)
            }
            Node::Branch(b) => {
                let i = nibble(h, depth);
                if matches!(b[i], Node::Empty) {
                    return None;
                }
                let branch = Arc::make_mut(b);
                let old = branch[i].remove(depth + 1, h, pred);
                if branch.iter().all(|n| matches!(n, Node::Empty)) {
                    *self = Node::Empty;
                }
                old
            }
        }
    }
}

/// Every connection of a trie, in no particular order.
pub struct Iter<'a> {
    stack: Vec<std::slice::Iter<'a, Node>>,
    leaf: std::slice::Iter<'a, Entry>,
}

impl<'a> Iter<'a> {
    fn new(root: &'a Node) -> Self {
        Self {
            stack: vec![std::slice::from_ref(root).iter()],
            leaf: [].iter(),
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Arc<Connection>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.leaf.next() {
                return Some(&e.1);
            }
            match self.stack.last_mut()?.next() {
                None => {
                    self.stack.pop();
                }
                Some(Node::Empty) => {}
                Some(Node::Leaf(l)) => self.leaf = l.iter(),
                Some(Node::Branch(b)) => self.stack.push(b.iter()),
            }
        }
    }
}

/// One integration's connections by connection id.
#[derive(Clone, Default)]
pub struct Connections {
    root: Node,
    len: usize,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.values().map(|c| &*c.connection_id))
            .finish()
    }
}

impl Connections {
    pub fn get(&self, connection_id: &str) -> Option<&Arc<Connection>> {
        self.root
            .find(hash(connection_id), |c| *c.connection_id == *connection_id)
    }

    pub fn contains_key(&self, connection_id: &str) -> bool {
        self.get(connection_id).is_some()
    }

    /// Inserts or replaces the connection with this id; returns the one replaced.
    pub fn insert(&mut self, conn: Arc<Connection>) -> Option<Arc<Connection>> {
        let h = hash(&conn.connection_id);
        let id: Arc<Connection> = conn.clone();
        let old = self
            .root
            .insert(0, h, conn, &|c| c.connection_id == id.connection_id);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, connection_id: &str) -> Option<Arc<Connection>> {
        let old = self.root.remove(0, hash(connection_id), &|c| {
            *c.connection_id == *connection_id
        });
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn values(&self) -> Iter<'_> {
        Iter::new(&self.root)
    }

    /// `(connection id, connection)` pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Connection>)> {
        self.values().map(|c| (&*c.connection_id, c))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values().map(|c| &*c.connection_id)
    }
}

impl FromIterator<Arc<Connection>> for Connections {
    /// Builds a table in one pass; a repeated id keeps the last.
    fn from_iter<I: IntoIterator<Item = Arc<Connection>>>(iter: I) -> Self {
        let mut t = Self::default();
        for c in iter {
            t.insert(c);
        }
        t
    }
}

impl<'a> IntoIterator for &'a Connections {
    type Item = (&'a str, &'a Arc<Connection>);
    type IntoIter =
        std::iter::Map<Iter<'a>, fn(&'a Arc<Connection>) -> (&'a str, &'a Arc<Connection>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.values().map(|c| (&*c.connection_id, c))
    }
}

/// Every connection by connection id alone: one id may belong to several integrations.
#[derive(Clone, Default)]
pub struct ById {
    root: Node,
}

impl std::fmt::Debug for ById {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ById { .. }")
    }
}

impl ById {
    /// The connections with this id, one per integration that has it.
    pub fn get<'a>(&'a self, connection_id: &'a str) -> impl Iterator<Item = &'a Arc<Connection>> {
        let h = hash(connection_id);
        self.root
            .leaf(h)
            .iter()
            .filter(move |e| e.0 == h && *e.1.connection_id == *connection_id)
            .map(|e| &e.1)
    }

    /// Inserts or replaces the connection with this integration and id.
    pub fn insert(&mut self, conn: Arc<Connection>) {
        let h = hash(&conn.connection_id);
        let id = conn.clone();
        self.root.insert(0, h, conn, &|c| {
            c.connection_id == id.connection_id && c.provider_config_key == id.provider_config_key
        });
    }

    pub fn remove(&mut self, provider_config_key: &str, connection_id: &str) {
        self.root.remove(0, hash(connection_id), &|c| {
            *c.connection_id == *connection_id && *c.provider_config_key == *provider_config_key
        });
    }

    pub fn values(&self) -> Iter<'_> {
        Iter::new(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{snapshot, BuildOptions, Sources};
    use std::collections::HashMap;

    /// `n` connections in each of integrations `a`, `b` and `c`, ids `c0`…: the same ids in
    /// every integration, as the by-id index must handle.
    fn pool(n: usize) -> Vec<Arc<Connection>> {
        let mut vault = String::from(
            "integrations: [{unique_key: a, provider: p}, {unique_key: b, provider: p}, {unique_key: c, provider: p}]\nconnections:\n",
        );
        for int in ["a", "b", "c"] {
            for i in 0..n {
                vault.push_str(&format!(
                    "  - {{connection_id: c{i}, provider_config_key: {int}, credentials: {{type: API_KEY, apiKey: k{i}}}}}\n"
                ));
            }
        }
        let src = Sources {
            providers_name: "p".into(),
            providers: "p: {auth_mode: API_KEY, proxy: {base_url: \"https://p.example\", headers: {x-key: \"${apiKey}\"}}}".into(),
            vault_name: "v".into(),
            vault,
        };
        let snap = snapshot::build(&src, &BuildOptions::default()).expect("builds");
        let mut all: Vec<Arc<Connection>> = snap
            .connections
            .values()
            .flat_map(|t| t.values().cloned())
            .collect();
        // In the order the vault lists them: integration, then the number in the id.
        all.sort_by_key(|c| {
            let n: usize = c.connection_id[1..].parse().unwrap_or(usize::MAX);
            (c.provider_config_key.clone(), n)
        });
        all
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Invariant: after any sequence of inserts and removes (enough to split leaves into
        /// branches and empty them again), both tables hold exactly what a `HashMap` model
        /// holds, and an older copy is untouched by what its clone went through.
        #[test]
        fn tables_match_a_hash_map(ops in proptest::collection::vec((0..3usize, 0..120usize, proptest::prelude::any::<bool>()), 0..600)) {
            let pool = pool(120);
            let conn = |int: usize, i: usize| pool[int * 120 + i].clone();
            let mut table = Connections::default();
            let mut by_id = ById::default();
            let mut model: HashMap<(usize, usize), Arc<Connection>> = HashMap::new();
            let mut saved: Option<(Connections, usize)> = None;
            for (step, (int, i, put)) in ops.iter().copied().enumerate() {
                let c = conn(int, i);
                if put {
                    if int == 0 {
                        let old = table.insert(c.clone());
                        proptest::prop_assert_eq!(old.is_some(), model.contains_key(&(0, i)));
                    }
                    by_id.insert(c.clone());
                    model.insert((int, i), c);
                } else {
                    if int == 0 {
                        let old = table.remove(&c.connection_id);
                        proptest::prop_assert_eq!(old.is_some(), model.contains_key(&(0, i)));
                    }
                    by_id.remove(&c.provider_config_key, &c.connection_id);
                    model.remove(&(int, i));
                }
                if step == ops.len() / 2 {
                    saved = Some((table.clone(), table.len()));
                }
            }
            let in_a = model.keys().filter(|k| k.0 == 0).count();
            proptest::prop_assert_eq!(table.len(), in_a);
            proptest::prop_assert_eq!(table.values().count(), in_a);
            proptest::prop_assert_eq!(by_id.values().count(), model.len());
            for i in 0..120 {
                let id = format!("c{i}");
                let want = model.get(&(0, i));
                let got = table.get(&id);
                proptest::prop_assert_eq!(got.map(Arc::as_ptr), want.map(Arc::as_ptr));
                let mut ints: Vec<&str> = by_id.get(&id).map(|c| &*c.provider_config_key).collect();
                ints.sort_unstable();
                let mut expect: Vec<&str> = (0..3)
                    .filter(|int| model.contains_key(&(*int, i)))
                    .map(|int| ["a", "b", "c"][int])
                    .collect();
                expect.sort_unstable();
                proptest::prop_assert_eq!(ints, expect);
            }
            if let Some((old, len)) = saved {
                proptest::prop_assert_eq!(old.values().count(), len);
                proptest::prop_assert_eq!(old.len(), len);
            }
        }
    }

    #[test]
    fn a_small_table_is_one_leaf_and_a_large_one_splits() {
        let pool = pool(100);
        let small: Connections = pool[..LEAF_MAX].iter().cloned().collect();
        assert!(matches!(small.root, Node::Leaf(_)));
        let large: Connections = pool[..100].iter().cloned().collect();
        assert!(matches!(large.root, Node::Branch(_)));
        assert_eq!(large.len(), 100);
        for c in &pool[..100] {
            assert!(large.contains_key(&c.connection_id));
        }
        assert!(!large.contains_key("nope"));
    }
}
