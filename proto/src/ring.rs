//! Shard ownership: rendezvous (highest-random-weight) hashing of a node
//! name over the member IDs. Agents and aggregators both call this, so they
//! cannot disagree about who owns a node.
//!
//! The weight of member `m` for key `k` is `xxh3_64(m ‖ 0x00 ‖ k)` with seed
//! 0 (XXH3, 64-bit, as specified by the xxHash project; stable across
//! releases and platforms). The owners of `k` are the `r` members with the
//! highest weights, ties broken by the smaller member ID. Removing a member
//! moves only the keys it owned; adding one moves only the keys it now owns.

use xxhash_rust::xxh3::xxh3_64;

/// Weight of `member` for `key`.
pub fn weight(member: &str, key: &str) -> u64 {
    let mut buf = Vec::with_capacity(member.len() + 1 + key.len());
    buf.extend_from_slice(member.as_bytes());
    buf.push(0);
    buf.extend_from_slice(key.as_bytes());
    xxh3_64(&buf)
}

/// The `r` owners of `key` among `members`, highest weight first. With
/// `r >= members.len()` every member owns every key (full replication).
/// Duplicate member IDs count once.
pub fn owners<'a, S: AsRef<str>>(members: &'a [S], key: &str, r: usize) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = members
        .iter()
        .map(|m| (weight(m.as_ref(), key), m.as_ref()))
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|b, a| a.1 == b.1);
    scored.into_iter().take(r).map(|(_, m)| m).collect()
}

/// A shard map for `members` (ID, URL) with replication `r`; its version
/// is a content hash, so every replica with the same view sends the same map.
pub fn shard_map(members: &[(String, String)], r: usize) -> crate::v1::ShardMap {
    let mut sorted: Vec<&(String, String)> = members.iter().collect();
    sorted.sort();
    let mut text = format!("r={r}");
    for (id, url) in &sorted {
        text.push_str(&format!("\n{id}={url}"));
    }
    crate::v1::ShardMap {
        version: xxh3_64(text.as_bytes()),
        members: sorted
            .into_iter()
            .map(|(id, url)| crate::v1::Member {
                id: id.clone(),
                url: url.clone(),
            })
            .collect(),
        replication_factor: u32::try_from(r).unwrap_or(u32::MAX),
        generation: 0,
    }
}

/// Whether an agent following `current` should switch to `next`: a new
/// version that is not older by generation. `stale` (no report accepted
/// for a while) accepts any new map, so a restarted replica set with lower
/// generations is followed again.
pub fn should_follow(
    current: Option<&crate::v1::ShardMap>,
    next: &crate::v1::ShardMap,
    stale: bool,
) -> bool {
    match current {
        None => true,
        Some(cur) if cur.version == next.version => false,
        Some(cur) => stale || next.generation >= cur.generation,
    }
}

/// URLs of the owners of `key` under `map`.
pub fn owner_urls(map: &crate::v1::ShardMap, key: &str) -> Vec<String> {
    let ids: Vec<&str> = map.members.iter().map(|m| m.id.as_str()).collect();
    owners(&ids, key, map.replication_factor as usize)
        .into_iter()
        .filter_map(|id| {
            map.members
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.url.clone())
        })
        .collect()
}

/// Whether `member` is among the `r` owners of `key`.
pub fn owns<S: AsRef<str>>(members: &[S], key: &str, r: usize, member: &str) -> bool {
    owners(members, key, r).contains(&member)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_are_followed_forward_only() {
        let m = |members: &[&str], generation| {
            let list: Vec<(String, String)> = members
                .iter()
                .map(|id| (id.to_string(), format!("https://{id}:1")))
                .collect();
            let mut map = shard_map(&list, 2);
            map.generation = generation;
            map
        };
        let old = m(&["a", "b"], 100);
        let new = m(&["a", "b", "c"], 120);
        assert!(should_follow(None, &old, false));
        assert!(should_follow(Some(&old), &new, false));
        assert!(
            !should_follow(Some(&new), &old, false),
            "an older view is ignored"
        );
        assert!(
            !should_follow(Some(&new), &m(&["a", "b", "c"], 130), false),
            "same members"
        );
        assert!(
            should_follow(Some(&new), &old, true),
            "when stale, any new map"
        );
        assert!(
            should_follow(Some(&m(&["a"], 0)), &m(&["b"], 0), false),
            "static lists"
        );
    }

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("metrics-aggregator-{i}")).collect()
    }

    fn keys() -> Vec<String> {
        (0..10_000)
            .map(|i| format!("node-{i:05}.cluster.example"))
            .collect()
    }

    #[test]
    fn weights_are_pinned() {
        // Changing these changes every cluster's ownership: never do it
        // without a protocol version bump.
        assert_eq!(weight("a", "node-1"), xxh3_64(b"a\0node-1"));
        assert_ne!(
            weight("ab", "c"),
            weight("a", "bc"),
            "the separator matters"
        );
    }

    #[test]
    fn full_replication_and_small_sets() {
        let m = members(3);
        assert_eq!(owners(&m, "n", 5).len(), 3);
        assert_eq!(owners(&m, "n", 0).len(), 0);
        assert!(owners::<String>(&[], "n", 2).is_empty());
        let dup = vec!["a".to_string(), "a".to_string(), "b".to_string()];
        assert_eq!(owners(&dup, "n", 3).len(), 2);
    }

    #[test]
    fn removing_one_of_n_moves_only_its_keys() {
        for n in [3usize, 5, 10] {
            let all = members(n);
            let gone = &all[1];
            let rest: Vec<String> = all.iter().filter(|m| *m != gone).cloned().collect();
            let keys = keys();
            let mut moved = 0;
            for k in &keys {
                let before = owners(&all, k, 1)[0];
                let after = owners(&rest, k, 1)[0];
                if before != after {
                    assert_eq!(before, gone, "only the removed member's keys move");
                    moved += 1;
                }
            }
            let frac = moved as f64 / keys.len() as f64;
            let want = 1.0 / n as f64;
            assert!(
                (frac - want).abs() < want * 0.15,
                "n={n}: moved {frac}, want ≈{want}"
            );
        }
    }

    #[test]
    fn adding_one_moves_about_one_in_n_plus_one_to_it() {
        for n in [2usize, 4, 9] {
            let before_set = members(n);
            let mut after_set = before_set.clone();
            after_set.push("metrics-aggregator-new".into());
            let keys = keys();
            let mut moved = 0;
            for k in &keys {
                let (b, a) = (owners(&before_set, k, 1)[0], owners(&after_set, k, 1)[0]);
                if a != b {
                    assert_eq!(
                        a, "metrics-aggregator-new",
                        "keys move only to the new member"
                    );
                    moved += 1;
                }
            }
            let frac = moved as f64 / keys.len() as f64;
            let want = 1.0 / (n + 1) as f64;
            assert!(
                (frac - want).abs() < want * 0.15,
                "n={n}: moved {frac}, want ≈{want}"
            );
        }
    }

    #[test]
    fn replicas_spread_evenly() {
        let m = members(3);
        let mut count = std::collections::HashMap::new();
        for k in keys() {
            for o in owners(&m, &k, 2) {
                *count.entry(o).or_insert(0) += 1;
            }
        }
        // Each member should hold about 2/3 of 10,000 keys.
        for (member, c) in count {
            assert!((6_000..=7_400).contains(&c), "{member} holds {c}");
        }
    }

    #[test]
    fn shard_maps_are_order_independent() {
        let a = vec![
            ("b".to_string(), "https://b:1".to_string()),
            ("a".to_string(), "https://a:1".to_string()),
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(shard_map(&a, 2), shard_map(&b, 2));
        assert_ne!(shard_map(&a, 2).version, shard_map(&a, 1).version);
        let map = shard_map(&a, 1);
        let urls = owner_urls(&map, "node-1");
        assert_eq!(urls.len(), 1);
        assert_eq!(
            urls[0],
            format!("https://{}:1", owners(&["a", "b"], "node-1", 1)[0])
        );
    }

    proptest! {
        #[test]
        fn all_parties_agree_whatever_the_order(
            mut ms in proptest::collection::vec("[a-z0-9-]{1,12}", 1..12),
            key in "[a-z0-9.-]{1,40}",
            r in 1usize..4,
            seed in any::<u64>(),
        ) {
            let want = owners(&ms, &key, r).iter().map(|s| s.to_string()).collect::<Vec<_>>();
            // Another party sees the same members in another order.
            let n = ms.len();
            for i in 0..n {
                ms.swap(i, (seed as usize).wrapping_add(i * 7) % n);
            }
            let got = owners(&ms, &key, r).iter().map(|s| s.to_string()).collect::<Vec<_>>();
            prop_assert_eq!(got, want);
        }
    }
}
