use super::*;
use crate::cluster::value::decode;
use proptest::prelude::*;

fn s(x: &str) -> Value {
    Value::Str(x.as_bytes().to_vec())
}

fn i(x: i64) -> Value {
    Value::Int(x)
}

fn shard_node(id: &str, ip: &str, port: i64, role: &str, extra: &[(&str, Value)]) -> Value {
    let mut v = vec![
        s("id"),
        s(id),
        s("port"),
        i(port),
        s("ip"),
        s(ip),
        s("endpoint"),
        s(ip),
        s("role"),
        s(role),
        s("replication-offset"),
        i(100),
        s("health"),
        s("online"),
    ];
    for (k, x) in extra {
        v.insert(0, x.clone());
        v.insert(0, s(k));
    }
    Value::Array(v)
}

fn shard(ranges: &[(i64, i64)], nodes: Vec<Value>) -> Value {
    Value::Array(vec![
        s("slots"),
        Value::Array(ranges.iter().flat_map(|(a, b)| [i(*a), i(*b)]).collect()),
        s("nodes"),
        Value::Array(nodes),
    ])
}

fn ctx(map: &AddressMap) -> Context<'_> {
    Context {
        seed_host: "seed.example",
        tls: false,
        address_map: map,
    }
}

#[test]
fn cluster_shards_of_three_masters() {
    let reply = Value::Array(vec![
        shard(
            &[(0, 5460)],
            vec![
                shard_node("a", "10.0.0.1", 7000, "master", &[]),
                shard_node("a2", "10.0.0.4", 7003, "replica", &[]),
            ],
        ),
        shard(
            &[(5461, 10922)],
            vec![shard_node("b", "10.0.0.2", 7001, "master", &[])],
        ),
        shard(
            &[(10923, 16383)],
            vec![shard_node("c", "10.0.0.3", 7002, "master", &[])],
        ),
    ]);
    let m = SlotMap::from_shards(&reply, &ctx(&AddressMap::default())).unwrap();
    assert!(m.is_complete());
    assert_eq!(m.shards().len(), 3);
    assert_eq!(m.master_of(0).unwrap().addr.to_string(), "10.0.0.1:7000");
    assert_eq!(m.master_of(5461).unwrap().id, "b");
    assert_eq!(m.master_of(16383).unwrap().addr.port, 7002);
    assert_eq!(m.shards()[0].replicas[0].addr.to_string(), "10.0.0.4:7003");
    assert_eq!(m.shards()[0].slot_count(), 5461);
    // Another node lists the shards in another order: the same map.
    let Value::Array(mut entries) = reply else {
        unreachable!()
    };
    entries.reverse();
    let again = SlotMap::from_shards(&Value::Array(entries), &ctx(&AddressMap::default()));
    assert_eq!(again.unwrap(), m);
}

#[test]
fn hostnames_tls_ports_and_the_address_map() {
    let reply = Value::Array(vec![shard(
        &[(0, 16383)],
        vec![shard_node(
            "a",
            "127.0.0.1",
            7000,
            "master",
            &[
                ("endpoint", s("node-a.internal")),
                ("hostname", s("node-a.internal")),
                ("tls-port", i(8000)),
            ],
        )],
    )]);
    let m = SlotMap::from_shards(&reply, &ctx(&AddressMap::default())).unwrap();
    assert_eq!(
        m.master_of(7).unwrap().addr.to_string(),
        "node-a.internal:7000"
    );
    let none = AddressMap::default();
    let tls = Context {
        tls: true,
        ..ctx(&none)
    };
    let m = SlotMap::from_shards(&reply, &tls).unwrap();
    assert_eq!(
        m.master_of(7).unwrap().addr.to_string(),
        "node-a.internal:8000"
    );
    // An entry for the announced ip (not the preferred endpoint) still applies.
    let map = AddressMap::parse(&BTreeMap::from([(
        "127.0.0.1:7000".to_string(),
        "lb.example:17000".to_string(),
    )]))
    .unwrap();
    let m = SlotMap::from_shards(&reply, &ctx(&map)).unwrap();
    let n = m.master_of(7).unwrap();
    assert_eq!(n.addr.to_string(), "lb.example:17000");
    assert_eq!(n.announced.to_string(), "127.0.0.1:7000");
}

#[test]
fn unknown_endpoint_is_the_seed_host() {
    let reply = Value::Array(vec![shard(
        &[(0, 16383)],
        vec![shard_node("a", "", 7000, "master", &[("endpoint", s("?"))])],
    )]);
    let m = SlotMap::from_shards(&reply, &ctx(&AddressMap::default())).unwrap();
    assert_eq!(
        m.master_of(0).unwrap().addr.to_string(),
        "seed.example:7000"
    );
}

#[test]
fn gaps_and_overlaps() {
    let reply = Value::Array(vec![
        shard(
            &[(0, 99), (200, 299)],
            vec![shard_node("a", "h", 1, "master", &[])],
        ),
        shard(&[], vec![shard_node("b", "h", 2, "master", &[])]),
        // A shard whose master failed and no replica took over yet: its slots are a gap.
        shard(&[(300, 400)], vec![shard_node("c", "h", 3, "replica", &[])]),
    ]);
    let m = SlotMap::from_shards(&reply, &ctx(&AddressMap::default())).unwrap();
    assert!(!m.is_complete());
    assert_eq!(m.gaps(), vec![(100, 199), (300, 16383)]);
    assert_eq!(m.shards().len(), 2);
    let overlap = Value::Array(vec![
        shard(&[(0, 16383)], vec![shard_node("a", "h", 1, "master", &[])]),
        shard(&[(0, 16383)], vec![shard_node("b", "h", 2, "master", &[])]),
    ]);
    assert!(matches!(
        SlotMap::from_shards(&overlap, &ctx(&AddressMap::default())),
        Err(MapError::Overlap { slot: 0, .. })
    ));
}

#[test]
fn a_failed_master_gives_way_to_the_promoted_one() {
    let reply = Value::Array(vec![shard(
        &[(0, 16383)],
        vec![
            shard_node("old", "h", 1, "master", &[("health", s("fail"))]),
            shard_node("new", "h", 2, "master", &[]),
        ],
    )]);
    let m = SlotMap::from_shards(&reply, &ctx(&AddressMap::default())).unwrap();
    assert_eq!(m.master_of(0).unwrap().id, "new");
    assert_eq!(m.shards()[0].replicas[0].id, "old");
}

#[test]
fn cluster_slots_6_2_and_7_0_forms() {
    // 6.2: [start, end, [ip, port, id], replicas…]; a master with two ranges.
    let wire = b"*3\r\n\
*4\r\n:0\r\n:5000\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$1\r\na\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\na2\r\n\
*3\r\n:5001\r\n:10000\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$1\r\nb\r\n\
*3\r\n:10001\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$1\r\na\r\n";
    let (reply, _) = decode(wire).unwrap();
    let m = SlotMap::from_slots(&reply, &ctx(&AddressMap::default())).unwrap();
    assert!(m.is_complete(), "{m:?}");
    assert_eq!(m.shards().len(), 2);
    assert_eq!(m.shards()[0].ranges, vec![(0, 5000), (10001, 16383)]);
    assert_eq!(m.shards()[0].replicas.len(), 1);
    // 7.0: the metadata map with the hostname; an empty endpoint means the seed's host.
    let wire = b"*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$0\r\n\r\n:7000\r\n$1\r\na\r\n*2\r\n$8\r\nhostname\r\n$6\r\nnode-a\r\n";
    let (reply, _) = decode(wire).unwrap();
    let m = SlotMap::from_slots(&reply, &ctx(&AddressMap::default())).unwrap();
    assert_eq!(m.master_of(0).unwrap().addr.to_string(), "node-a:7000");
}

#[test]
fn address_map_parse_errors() {
    let bad = BTreeMap::from([("nope".to_string(), "h:1".to_string())]);
    assert!(AddressMap::parse(&bad).is_err());
    let bad = BTreeMap::from([("h:1".to_string(), ":1".to_string())]);
    assert!(AddressMap::parse(&bad).is_err());
    let v6 = BTreeMap::from([("[::1]:7000".to_string(), "10.0.0.1:7000".to_string())]);
    let m = AddressMap::parse(&v6).unwrap();
    assert_eq!(
        m.apply(&NodeAddr::parse("::1:7000").unwrap()).to_string(),
        "10.0.0.1:7000"
    );
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<i64>().prop_map(Value::Int),
        (-5i64..20000).prop_map(Value::Int),
        prop_oneof![
            Just("slots"),
            Just("nodes"),
            Just("port"),
            Just("tls-port"),
            Just("ip"),
            Just("endpoint"),
            Just("role"),
            Just("master"),
            Just("replica"),
            Just("health"),
            Just("id"),
            Just("?"),
            Just("")
        ]
        .prop_map(s),
        "[a-z0-9:.]{0,8}".prop_map(|x| s(&x)),
    ];
    leaf.prop_recursive(5, 200, 10, |inner| {
        proptest::collection::vec(inner, 0..10).prop_map(Value::Array)
    })
}

proptest! {
    #[test]
    fn never_panics_on_any_tree(v in arb_value()) {
        let _ = SlotMap::from_shards(&v, &ctx(&AddressMap::default()));
        let _ = SlotMap::from_slots(&v, &ctx(&AddressMap::default()));
    }

    /// Random cut points into consecutive ranges, some left unassigned: the map serves exactly
    /// the assigned ones and reports the rest as gaps, from either reply form.
    #[test]
    fn ranges_are_served_or_reported(mut cuts in proptest::collection::vec(1u16..16383, 0..12),
                                     masters in 1usize..5,
                                     holes in proptest::collection::vec(any::<bool>(), 13)) {
        cuts.sort_unstable();
        cuts.dedup();
        let mut bounds = vec![0u16];
        bounds.extend(cuts);
        bounds.push(16384);
        let mut per_master: Vec<Vec<(i64, i64)>> = vec![Vec::new(); masters];
        let mut slots_entries = Vec::new();
        let mut expect = vec![None; SLOTS];
        for (k, w) in bounds.windows(2).enumerate() {
            if holes[k % holes.len()] && k % 3 == 0 {
                continue;
            }
            let (a, b) = (w[0] as i64, w[1] as i64 - 1);
            let m = k % masters;
            per_master[m].push((a, b));
            for x in a..=b { expect[x as usize] = Some(m); }
            slots_entries.push(Value::Array(vec![i(a), i(b), Value::Array(vec![s("h"), i(7000 + m as i64), s(&format!("n{m}"))])]));
        }
        let shards = Value::Array(per_master.iter().enumerate().map(|(m, r)| {
            shard(r, vec![shard_node(&format!("n{m}"), "h", 7000 + m as i64, "master", &[])])
        }).collect());
        let a = SlotMap::from_shards(&shards, &ctx(&AddressMap::default())).unwrap();
        let b = SlotMap::from_slots(&Value::Array(slots_entries), &ctx(&AddressMap::default())).unwrap();
        for map in [&a, &b] {
            for (slot, e) in expect.iter().enumerate() {
                let got = map.master_of(slot as Slot).map(|n| n.addr.port - 7000);
                prop_assert_eq!(got, e.map(|m| m as u16));
            }
            let unserved: usize = map.gaps().iter().map(|(x, y)| (*y - *x) as usize + 1).sum();
            prop_assert_eq!(unserved, expect.iter().filter(|e| e.is_none()).count());
            prop_assert_eq!(map.is_complete(), unserved == 0);
        }
    }
}
