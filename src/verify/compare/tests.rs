use super::*;

#[test]
fn ttls() {
    assert_eq!(ttl_diff("string", -1, -1, 2000), None);
    assert_eq!(ttl_diff("string", 5000, 4000, 2000), None);
    assert_eq!(
        ttl_diff("string", 5000, 2999, 2000).unwrap().kind,
        DiffKind::Ttl
    );
    assert_eq!(
        ttl_diff("string", 5000, -1, 2000).unwrap().kind,
        DiffKind::TtlOneSide
    );
    assert_eq!(
        ttl_diff("string", -1, 10, 2000).unwrap().kind,
        DiffKind::TtlOneSide
    );
}

#[test]
fn stream_ids() {
    assert_eq!(next_stream_id(b"5-3").as_deref(), Some("5-4"));
    assert_eq!(
        next_stream_id(format!("5-{}", u64::MAX).as_bytes()).as_deref(),
        Some("6-0")
    );
    assert_eq!(next_stream_id(b"x"), None);
}

#[test]
fn scores_compare_as_numbers() {
    let r = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
    assert!(same_score(Some(&r("1.1")), Some(&r("1.1000000000000001"))));
    assert!(same_score(Some(&r("inf")), Some(&r("inf"))));
    assert!(!same_score(Some(&r("1")), Some(&r("2"))));
    assert!(!same_score(Some(&r("1")), None));
}

#[test]
fn map_differences() {
    let m = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Reply::Bulk(v.as_bytes().to_vec())))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        first_map_difference("field", &m(&[("a", "1")]), &m(&[("a", "1")])),
        None
    );
    assert_eq!(
        first_map_difference("field", &m(&[("a", "1")]), &m(&[("a", "2")])).unwrap(),
        "field \"a\": \"1\" vs \"2\""
    );
    assert_eq!(
        first_map_difference("field", &m(&[]), &m(&[("b", "2")])).unwrap(),
        "field \"b\": only on the target"
    );
}
