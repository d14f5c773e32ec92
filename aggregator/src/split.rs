//! Lists across the cluster with each node's objects sent once. With R
//! owners per node, asking every replica for everything moves each object
//! R times and makes the asker merge R copies. Instead the asker names the
//! nodes it answers itself (`held`) and the shard map it follows; each peer
//! sends a node only when it is that node's designated sender (its first
//! owner other than the asker) and says which nodes it sent (`covered`) and
//! which it left to another owner (`deferred`). A node left aside that no
//! answer covered (its designated sender failed, or never had it) is asked
//! for by name in a second round. A peer on another map version sends every
//! node the asker does not hold; one that predates the split sends
//! everything; the merge drops the copies either way.

use std::collections::HashSet;

use metrics_proto::v1::ListSplit;

use crate::shard::Shard;

/// How a split names a node: xxh3_64 of its name, seed 0.
pub fn node_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// Sorted, deduplicated hashes.
fn sorted(mut hashes: Vec<u64>) -> Vec<u64> {
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// What a replica answering a split sends: the names of the nodes whose
/// objects go out, and the `covered` and `deferred` lists for the answer.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub send: HashSet<String>,
    pub covered: Vec<u64>,
    pub deferred: Vec<u64>,
}

impl Plan {
    /// Decides for each of `nodes` (the live nodes this replica holds)
    /// under `split`, with `shard` this replica's view (none: not sharded).
    pub fn new<'a>(
        split: &ListSplit,
        shard: Option<&Shard>,
        nodes: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut plan = Plan::default();
        let send = |plan: &mut Plan, name: &str, hash: u64| {
            plan.send.insert(name.to_owned());
            plan.covered.push(hash);
        };
        if !split.only.is_empty() {
            let only: HashSet<u64> = split.only.iter().copied().collect();
            for name in nodes {
                let hash = node_hash(name);
                if only.contains(&hash) {
                    send(&mut plan, name, hash);
                }
            }
            return plan;
        }
        let held = sorted(split.held.clone());
        let same_map = shard.filter(|s| s.map.version == split.map_version);
        for name in nodes {
            let hash = node_hash(name);
            if held.binary_search(&hash).is_ok() {
                continue;
            }
            let designated = same_map.map(|s| {
                s.owners(name)
                    .into_iter()
                    .find(|o| *o != split.asker)
                    .is_none_or(|o| o == s.self_id)
            });
            match designated {
                // Another map, or no sharding: send what the asker lacks.
                None | Some(true) => send(&mut plan, name, hash),
                Some(false) => plan.deferred.push(hash),
            }
        }
        plan
    }
}

/// The second round: for each node some answer deferred and none covered
/// (nor the asker holds), the first peer (in `answers`' order) that
/// deferred it, as (peer, nodes wanted from it).
pub fn second_round(
    held: &[u64],
    answers: &[(String, Vec<u64>, Vec<u64>)],
) -> Vec<(String, Vec<u64>)> {
    let covered: HashSet<u64> = answers
        .iter()
        .flat_map(|(_, covered, _)| covered.iter().copied())
        .chain(held.iter().copied())
        .collect();
    let mut assigned: HashSet<u64> = HashSet::new();
    answers
        .iter()
        .filter_map(|(peer, _, deferred)| {
            let wanted: Vec<u64> = deferred
                .iter()
                .copied()
                .filter(|h| !covered.contains(h) && assigned.insert(*h))
                .collect();
            (!wanted.is_empty()).then(|| (peer.clone(), sorted(wanted)))
        })
        .collect()
}

/// The split an asker sends in its first round.
pub fn first_round(shard: &Shard, held: Vec<u64>) -> ListSplit {
    ListSplit {
        asker: shard.self_id.clone(),
        map_version: shard.map.version,
        held: sorted(held),
        only: Vec::new(),
    }
}

/// The split of a second round: exactly `only`.
pub fn only(shard: &Shard, only: Vec<u64>) -> ListSplit {
    ListSplit {
        asker: shard.self_id.clone(),
        map_version: shard.map.version,
        held: Vec::new(),
        only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(me: &str) -> Shard {
        let members = (0..3)
            .map(|i| (format!("agg-{i}"), format!("https://10.0.0.{i}:10251")))
            .collect();
        Shard::new(me.into(), members, 2)
    }

    fn names() -> Vec<String> {
        (0..200).map(|i| format!("node-{i}")).collect()
    }

    /// Every node is answered exactly once across the asker and the two
    /// peers, when all of them hold every node they own.
    #[test]
    fn each_node_is_sent_by_exactly_one_replica() {
        let asker = shard("agg-0");
        let names = names();
        let owned =
            |s: &Shard| -> Vec<String> { names.iter().filter(|n| s.owns(n)).cloned().collect() };
        let held: Vec<u64> = owned(&asker).iter().map(|n| node_hash(n)).collect();
        let split = first_round(&asker, held.clone());
        let mut answers = Vec::new();
        let mut sent: Vec<String> = owned(&asker);
        for peer in ["agg-1", "agg-2"] {
            let s = shard(peer);
            let mine = owned(&s);
            let plan = Plan::new(&split, Some(&s), mine.iter().map(String::as_str));
            sent.extend(plan.send.iter().cloned());
            answers.push((peer.to_owned(), plan.covered, plan.deferred));
        }
        sent.sort();
        let mut want = names.clone();
        want.sort();
        assert_eq!(sent, want, "each node once");
        assert!(second_round(&sorted(held), &answers).is_empty());
        // Both peers sent something: the work is split, not all on one.
        assert!(answers.iter().all(|(_, covered, _)| !covered.is_empty()));
    }

    /// A peer that did not answer leaves its designated nodes to the second
    /// round, asked of the peer that deferred them, which then sends them.
    #[test]
    fn a_failed_peers_nodes_are_asked_for_again() {
        let asker = shard("agg-0");
        let names = names();
        let held: Vec<u64> = names
            .iter()
            .filter(|n| asker.owns(n))
            .map(|n| node_hash(n))
            .collect();
        let split = first_round(&asker, held.clone());
        let s1 = shard("agg-1");
        let mine: Vec<&str> = names
            .iter()
            .filter(|n| s1.owns(n))
            .map(String::as_str)
            .collect();
        let plan = Plan::new(&split, Some(&s1), mine.iter().copied());
        assert!(!plan.deferred.is_empty());
        // agg-2 failed: only agg-1 answered.
        let answers = vec![(
            "agg-1".to_owned(),
            plan.covered.clone(),
            plan.deferred.clone(),
        )];
        let again = second_round(&sorted(held), &answers);
        assert_eq!(
            again,
            vec![("agg-1".to_owned(), sorted(plan.deferred.clone()))]
        );
        let round2 = Plan::new(
            &only(&asker, again[0].1.clone()),
            Some(&s1),
            mine.iter().copied(),
        );
        assert_eq!(round2.covered.len(), plan.deferred.len());
        assert!(round2.deferred.is_empty());
        // Together the two rounds send every node agg-1 holds and agg-0 does not.
        let together: HashSet<&String> = plan.send.iter().chain(round2.send.iter()).collect();
        let expected: HashSet<&String> = names
            .iter()
            .filter(|n| s1.owns(n) && !asker.owns(n))
            .collect();
        assert_eq!(together, expected);
    }

    /// A peer on another map version cannot know who else sends: it sends
    /// every node the asker does not hold.
    #[test]
    fn another_map_version_sends_all_the_asker_lacks() {
        let asker = shard("agg-0");
        let names = names();
        let held: Vec<u64> = names[..50].iter().map(|n| node_hash(n)).collect();
        let mut split = first_round(&asker, held);
        split.map_version ^= 1;
        let plan = Plan::new(
            &split,
            Some(&shard("agg-1")),
            names.iter().map(String::as_str),
        );
        assert_eq!(plan.send.len(), 150);
        assert!(plan.deferred.is_empty());
        assert!(!plan.send.contains("node-3"));
        // Unsharded (no view): the same.
        let plan = Plan::new(&split, None, names.iter().map(String::as_str));
        assert_eq!(plan.send.len(), 150);
    }

    /// A node deferred by two peers is asked of one only; a node one answer
    /// covered or the asker holds is not asked for.
    #[test]
    fn second_round_asks_each_node_once() {
        let answers = vec![
            ("agg-1".to_owned(), vec![1], vec![2, 3, 4]),
            ("agg-2".to_owned(), vec![3], vec![2, 5, 4]),
        ];
        let again = second_round(&[4], &answers);
        assert_eq!(
            again,
            vec![("agg-1".to_owned(), vec![2]), ("agg-2".to_owned(), vec![5])]
        );
    }
}
