//! A Redis 7.0 cluster over TLS (`tls-port` on every node, `tls-cluster yes`): the slot map
//! read over TLS names every node by its TLS port (`tls-port` in `CLUSTER SHARDS`), every node
//! is reached with the side's TLS settings (the test CA), and `cutover verify` compares the
//! TLS cluster with a plain standalone server, finding a planted difference.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::Cluster;
use common::{Server, Version, free_port};
use cutover::cluster::{Side, SideSpec};
use cutover::config::TlsOptions;
use cutover::verify::{self, VerifyOptions, scan::Progress};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA and one certificate for 127.0.0.1 (server and client use: the cluster bus connects
/// with it too), as PEM files.
fn pki(dir: &std::path::Path) {
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "cutover cluster test CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = p.self_signed(&key).unwrap();
    write("ca.pem", ca.pem());
    let issuer = Issuer::new(p, key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &issuer).unwrap();
    write("node.pem", cert.pem());
    write("node.key", key.serialize_pem());
}

#[test]
fn a_tls_cluster_is_mapped_and_verified_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let path = |n: &str| dir.path().join(n).display().to_string();
    let tls_ports = RefCell::new(Vec::new());
    let c = Cluster::start_with(Version::Redis70, 3, 0, &mut || {
        let p = free_port();
        tls_ports.borrow_mut().push(p);
        vec![
            "--tls-port".into(),
            p.to_string(),
            "--tls-cert-file".into(),
            path("node.pem"),
            "--tls-key-file".into(),
            path("node.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
            "--tls-cluster".into(),
            "yes".into(),
        ]
    });
    let tls_ports = tls_ports.into_inner();
    let tls = TlsOptions {
        ca_file: Some(path("ca.pem")),
        ..TlsOptions::default()
    };
    // One TLS seed: the node's TLS port.
    let url = format!("rediss://127.0.0.1:{}", tls_ports[0]);
    let spec = SideSpec::parse(&url, &tls, &BTreeMap::new()).unwrap();
    let side = spec
        .resolve(Duration::from_secs(5))
        .expect("resolve over TLS");
    let Side::Cluster(topo) = &side else {
        panic!("not a cluster: {side:?}")
    };
    for s in topo.map().shards() {
        assert!(
            tls_ports.contains(&s.master.addr.port),
            "{} is not a TLS port ({tls_ports:?})",
            s.master.addr
        );
    }
    for u in side.masters() {
        assert!(u.tls.is_some(), "{u} without TLS");
    }

    // Verify the TLS cluster against a plain server with the same data, then a difference.
    let plain = Server::start(Version::Redis70);
    let pairs: Vec<(String, String)> = (0..300)
        .map(|i| (format!("k:{i}"), i.to_string()))
        .collect();
    c.set_many(&pairs);
    let mut p = redis::pipe();
    for (k, v) in &pairs {
        p.cmd("SET").arg(k).arg(v).ignore();
    }
    let _: () = p.query(&mut plain.conn()).unwrap();
    let run = || {
        let target = cutover::config::RedisUrl::parse(&plain.url()).unwrap();
        let mut o = VerifyOptions::new(spec.first().clone(), target);
        o.source_side = Some(spec.clone());
        o.rounds = 1;
        o.interval = Duration::from_millis(50);
        verify::run(&o, &Arc::new(Progress::default())).expect("verify runs")
    };
    let r = run();
    assert!(r.is_equal(), "{:?}", r.diffs);
    assert_eq!(r.source_keys, 300);
    let _: () = redis::cmd("SET")
        .arg("k:9")
        .arg("changed")
        .query(&mut plain.conn())
        .unwrap();
    let r = run();
    assert_eq!(r.diffs.len(), 1, "{:?}", r.diffs);
    assert_eq!(r.diffs[0].key, b"k:9");
}
