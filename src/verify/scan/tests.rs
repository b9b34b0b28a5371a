use super::*;
use proptest::prelude::*;

proptest! {
    /// Any order of the same keys gives the same digest; one key more or fewer never does.
    #[test]
    fn digest_is_a_set_function(
        keys in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 0..12), 1..40),
        seed in any::<u64>(),
    ) {
        let keys: Vec<Vec<u8>> = keys.into_iter().collect();
        let mut shuffled = keys.clone();
        let n = shuffled.len();
        for i in 0..n {
            shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % n);
        }
        let (mut a, mut b, mut c) = (KeySetDigest::default(), KeySetDigest::default(), KeySetDigest::default());
        keys.iter().for_each(|k| a.add(k));
        shuffled.iter().for_each(|k| b.add(k));
        keys[1..].iter().for_each(|k| c.add(k));
        prop_assert_eq!(a, b);
        prop_assert_ne!(a, c);
    }
}

#[test]
fn key_set_digests_ignore_order_and_see_one_key_more() {
    let (mut a, mut b, mut c) = (
        KeySetDigest::default(),
        KeySetDigest::default(),
        KeySetDigest::default(),
    );
    for k in [&b"x"[..], b"y", b"\xff"] {
        a.add(k);
    }
    for k in [&b"\xff"[..], b"x", b"y"] {
        b.add(k);
    }
    assert_eq!(a, b);
    for k in [&b"x"[..], b"y", b"z"] {
        c.add(k);
    }
    assert_ne!(a, c);
    b.add(b"extra");
    assert_ne!(a, b);
}
