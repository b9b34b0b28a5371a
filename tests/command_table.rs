//! The command table (`src/command/`) against the real servers it was generated from.
//!
//! (a) For every server: the table has exactly the commands and subcommands `COMMAND INFO`
//!     lists, with the same arity, flags, first/last/step and key specs.
//! (b) Key extraction agrees with `COMMAND GETKEYS` for commands generated from each
//!     command's `COMMAND DOCS` argument structure (several variants each) and hand-written
//!     templates for the movable-key commands.
//!
//! The servers are started here from `.servers/bin` (Redis 6.2, 7.0, 8.2, Valkey 8.1, 9.1: see
//! `scripts/install-servers.sh`); a missing one is a failure, never a skip.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutover::command::{
    self, Begin, COMMANDS, FLAG_NAMES, Find, KEY_FLAG_NAMES, KeyError, KeySpec, SERVERS,
};
use redis::Value;

/// A server started for this test (stopped on drop).
struct Srv {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Srv {
    fn start(binary: &str) -> Srv {
        let path = common::tool(binary);
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_port();
        let child = Command::new(path)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let srv = Srv {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{binary} did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        srv
    }

    fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.get_connection() {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect: {e}"),
            }
        }
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary of server `name` as the table names it (`redis-7.0` → `redis-7.0-server`).
fn binary(name: &str) -> String {
    format!("{name}-server")
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::Int(i) => i.to_string(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => panic!("not text: {other:?}"),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => text(other).parse().expect("integer"),
    }
}

fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.clone(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
        Value::Nil => Vec::new(),
        other => panic!("not an aggregate: {other:?}"),
    }
}

/// A flattened map as (key, value) pairs.
fn pairs(v: &Value) -> Vec<(String, Value)> {
    items(v)
        .chunks(2)
        .map(|c| (text(&c[0]), c[1].clone()))
        .collect()
}

fn get(v: &Value, key: &str) -> Option<Value> {
    pairs(v).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn flag_bits(names: &[String], table: &[&str]) -> u64 {
    let mut bits = 0;
    for n in names {
        let i = table
            .iter()
            .position(|t| t == n)
            .unwrap_or_else(|| panic!("flag {n} is not in the table's flag list"));
        bits |= 1 << i;
    }
    bits
}

fn spec_of(v: &Value) -> KeySpec {
    let flags: Vec<String> = get(v, "flags")
        .map(|f| items(&f).iter().map(text).collect())
        .unwrap_or_default();
    let bs = get(v, "begin_search").unwrap();
    let fk = get(v, "find_keys").unwrap();
    let bss = get(&bs, "spec").unwrap_or(Value::Nil);
    let fks = get(&fk, "spec").unwrap_or(Value::Nil);
    let begin = match text(&get(&bs, "type").unwrap()).as_str() {
        "index" => Begin::Index(int(&get(&bss, "index").unwrap()) as i16),
        "keyword" => Begin::Keyword(
            Box::leak(text(&get(&bss, "keyword").unwrap()).into_boxed_str()),
            int(&get(&bss, "startfrom").unwrap()) as i16,
        ),
        _ => Begin::Unknown,
    };
    let find = match text(&get(&fk, "type").unwrap()).as_str() {
        "range" => Find::Range {
            last: int(&get(&fks, "lastkey").unwrap()) as i16,
            step: int(&get(&fks, "keystep").unwrap()) as i16,
            limit: int(&get(&fks, "limit").unwrap()) as i16,
        },
        "keynum" => Find::Keynum {
            index: int(&get(&fks, "keynumidx").unwrap()) as i16,
            first: int(&get(&fks, "firstkey").unwrap()) as i16,
            step: int(&get(&fks, "keystep").unwrap()) as i16,
        },
        _ => Find::Unknown,
    };
    KeySpec {
        flags: flag_bits(&flags, KEY_FLAG_NAMES) as u16,
        begin,
        find,
    }
}

/// Compares one `COMMAND INFO` entry with the table's view of that server; returns the
/// number of (sub)commands checked.
fn check_entry(entry: &Value, table: &command::Command, server: u8, errors: &mut Vec<String>) {
    let e = items(entry);
    let name = text(&e[0]).to_ascii_lowercase();
    let Some(view) = table.on_server(server) else {
        errors.push(format!("{name}: the table says the server lacks it"));
        return;
    };
    let (arity, flags, legacy, specs) = (view.arity, view.flags, view.legacy, view.key_specs);
    let got_flags: Vec<String> = items(&e[2])
        .iter()
        .map(|f| text(f).replace('-', "_"))
        .collect();
    let got_legacy = (int(&e[3]) as i8, int(&e[4]) as i8, int(&e[5]) as i8);
    if int(&e[1]) as i16 != arity {
        errors.push(format!("{name}: arity {} vs table {arity}", int(&e[1])));
    }
    if flag_bits(&got_flags, FLAG_NAMES) as u32 != flags {
        errors.push(format!("{name}: flags {got_flags:?} vs table {flags:#x}"));
    }
    if got_legacy != legacy {
        errors.push(format!(
            "{name}: first/last/step {got_legacy:?} vs {legacy:?}"
        ));
    }
    let got_specs: Vec<KeySpec> = e
        .get(8)
        .map(items)
        .unwrap_or_default()
        .iter()
        .map(spec_of)
        .collect();
    if e.len() > 8 && got_specs != specs {
        errors.push(format!("{name}: key specs {got_specs:?} vs {specs:?}"));
    }
    let subs = e.get(9).map(items).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for sub in &subs {
        let sname = text(&items(sub)[0]).to_ascii_lowercase();
        seen.insert(sname.clone());
        match table.subcommands.iter().find(|s| s.name == sname) {
            Some(t) => check_entry(sub, t, server, errors),
            None => errors.push(format!("{sname}: not in the table")),
        }
    }
    if e.len() > 9 {
        for t in table.subcommands {
            if t.servers & server != 0 && !seen.contains(t.name) {
                errors.push(format!("{}: in the table but not on the server", t.name));
            }
        }
    }
}

#[test]
fn the_table_agrees_with_every_server() {
    for (i, name) in SERVERS.iter().enumerate() {
        let bit = 1u8 << i;
        let srv = Srv::start(&binary(name));
        let mut con = srv.conn();
        let info: Value = redis::cmd("COMMAND").query(&mut con).expect("COMMAND");
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for entry in items(&info) {
            let cname = text(&items(&entry)[0]).to_ascii_lowercase();
            seen.insert(cname.clone());
            match command::lookup(cname.as_bytes()) {
                Some(t) => check_entry(&entry, t, bit, &mut errors),
                None => errors.push(format!("{cname}: not in the table")),
            }
        }
        for c in COMMANDS {
            if c.servers & bit != 0 && !seen.contains(c.name) {
                errors.push(format!("{}: in the table but not on the server", c.name));
            }
        }
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        assert!(seen.len() > 200, "{name}: only {} commands", seen.len());
        eprintln!("{name}: {} commands agree with the table", seen.len());
    }
}

// ----- (b) key extraction vs COMMAND GETKEYS ---------------------------------------------

/// A tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }
}

/// Appends arguments for one documented argument (`COMMAND DOCS` structure).
fn gen_arg(arg: &Value, rng: &mut Rng, out: &mut Vec<String>, n: &mut usize) {
    let flags: Vec<String> = get(arg, "flags")
        .map(|f| items(&f).iter().map(text).collect())
        .unwrap_or_default();
    let optional = flags.iter().any(|f| f == "optional");
    let multiple = flags.iter().any(|f| f == "multiple");
    let multiple_token = flags.iter().any(|f| f == "multiple_token");
    if optional && rng.chance(2) {
        return;
    }
    let repeats = if multiple { 1 + rng.next() % 3 } else { 1 };
    let token = get(arg, "token").map(|t| text(&t));
    let kind = get(arg, "type").map(|t| text(&t)).unwrap_or_default();
    let name = get(arg, "name").map(|t| text(&t)).unwrap_or_default();
    let start = out.len();
    for r in 0..repeats {
        if let Some(t) = &token
            && (r == 0 || multiple_token)
        {
            out.push(t.clone());
        }
        match kind.as_str() {
            "pure-token" => {}
            "oneof" => {
                let subs = get(arg, "arguments").map(|a| items(&a)).unwrap_or_default();
                if !subs.is_empty() {
                    let pick = (rng.next() % subs.len() as u64) as usize;
                    gen_arg(&subs[pick], rng, out, n);
                }
            }
            "block" => {
                for sub in get(arg, "arguments").map(|a| items(&a)).unwrap_or_default() {
                    gen_arg(&sub, rng, out, n);
                }
            }
            "key" => {
                *n += 1;
                out.push(format!("key:{}", *n));
            }
            "integer" | "double" | "unix-time" => out.push(format!("{}", 1 + rng.next() % 3)),
            _ => {
                *n += 1;
                out.push(format!("{name}{}", *n));
            }
        }
    }
    let _ = start;
}

/// Argument lists for a documented command: a few random choices of its optional and
/// repeated arguments, with `numkeys`-style counts set to the number of keys that follow.
fn gen_from_docs(words: &[&str], args: &[Value], seed: u64) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for variant in 0..4 {
        let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(variant * 7919) | 1);
        let mut argv: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let mut n = 0;
        let mut counts = Vec::new();
        for a in args {
            let name = get(a, "name").map(|t| text(&t)).unwrap_or_default();
            if name == "numkeys" || name == "numfunctions" || name == "numsets" {
                counts.push(argv.len());
            }
            gen_arg(a, &mut rng, &mut argv, &mut n);
        }
        // A count argument announces the keys after it.
        for &at in &counts {
            if at < argv.len() {
                let keys = argv[at + 1..]
                    .iter()
                    .take_while(|a| a.starts_with("key:"))
                    .count();
                argv[at] = keys.to_string();
            }
        }
        out.push(argv);
    }
    out
}

/// Hand-written commands for the movable-key commands (and their "no keys" forms).
fn templates() -> Vec<&'static str> {
    vec![
        "EVAL s 2 a b x",
        "EVAL s 0",
        "EVALSHA s 1 a",
        "EVAL_RO s 1 a b",
        "FCALL f 2 a b c",
        "FCALL_RO f 0",
        "XREAD COUNT 2 STREAMS a b 0 0",
        "XREAD BLOCK 1 STREAMS a 0",
        "XREAD STREAMS a b 0",
        "XREADGROUP GROUP g c COUNT 1 STREAMS a b > >",
        "ZUNIONSTORE d 2 a b WEIGHTS 1 2",
        "ZINTERSTORE d 1 a",
        "ZDIFFSTORE d 3 a b c",
        "ZUNION 2 a b WITHSCORES",
        "ZINTER 1 a",
        "ZDIFF 2 a b",
        "ZINTERCARD 2 a b LIMIT 1",
        "SINTERCARD 3 a b c",
        "LMPOP 2 a b LEFT COUNT 2",
        "BLMPOP 0 1 a RIGHT",
        "ZMPOP 2 a b MIN",
        "BZMPOP 1 2 a b MAX COUNT 3",
        "SORT k",
        "SORT k BY w LIMIT 0 1 GET g STORE d",
        "SORT k STORE d STORE e",
        "SORT k GET store",
        "SORT_RO k BY w",
        "MIGRATE h 1 k 0 5",
        "MIGRATE h 1 k 0 5 COPY REPLACE",
        "MIGRATE h 1 \"\" 0 5 KEYS a b",
        "MIGRATE h 1 \"\" 0 5 AUTH keys KEYS a",
        "MIGRATE h 1 \"\" 0 5 AUTH2 u keys KEYS a b c",
        "GEORADIUS g 0 0 1 km STORE d",
        "GEORADIUS g 0 0 1 km STOREDIST d",
        "GEORADIUS g 0 0 1 km WITHDIST",
        "GEORADIUSBYMEMBER g m 1 km STORE d",
        "GEORADIUS_RO g 0 0 1 km",
        "GEOSEARCHSTORE d s FROMMEMBER m BYRADIUS 1 km",
        "OBJECT ENCODING k",
        "OBJECT FREQ k",
        "MEMORY USAGE k",
        "MEMORY USAGE k SAMPLES 5",
        "XINFO STREAM s FULL",
        "XGROUP CREATE s g $ MKSTREAM",
        "BITOP AND d a b c",
        "MSET a 1 b 2 c 3",
        "MSETNX a 1",
        "DEL a b c d e f g h i j k",
        "SET k v GET",
        "BITFIELD k GET u8 0",
        "BITFIELD_RO k GET u8 0",
        "LCS a b",
        "BLPOP a b c 0",
        "BLMOVE a b LEFT RIGHT 0",
        "RENAME a b",
        "COPY a b DB 1",
        "PFCOUNT a b",
        "PFMERGE d a b",
        "WATCH a b",
        "SPUBLISH c m",
        "PUBLISH c m",
    ]
}

/// Splits a template line (`""` is an empty argument).
fn words(line: &str) -> Vec<String> {
    line.split(' ')
        .map(|w| {
            if w == "\"\"" {
                String::new()
            } else {
                w.to_string()
            }
        })
        .collect()
}

#[derive(Default, Debug)]
struct Tally {
    agreed_keys: usize,
    agreed_none: usize,
    skipped: usize,
    skip_reasons: std::collections::BTreeMap<String, usize>,
    mismatches: Vec<String>,
}

fn compare(con: &mut redis::Connection, argv: &[String], tally: &mut Tally) {
    let refs: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
    let ours = command::key_positions(&refs)
        .map(|p| p.into_iter().map(|i| argv[i].clone()).collect::<Vec<_>>());
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYS");
    for a in argv {
        cmd.arg(a);
    }
    match cmd.query::<Value>(con) {
        Ok(v) => {
            let theirs: Vec<String> = items(&v).iter().map(text).collect();
            match &ours {
                Ok(o) if *o == theirs => {
                    if o.is_empty() {
                        tally.agreed_none += 1
                    } else {
                        tally.agreed_keys += 1
                    }
                }
                _ => tally
                    .mismatches
                    .push(format!("{argv:?}: server {theirs:?}, ours {ours:?}")),
            }
        }
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("no key arguments") || msg.contains("Invalid arguments") {
                // No keys, as the server says: ours must find none either.
                match &ours {
                    Ok(o) if o.is_empty() => tally.agreed_none += 1,
                    Err(KeyError::Invalid) => tally.agreed_none += 1,
                    _ => tally
                        .mismatches
                        .push(format!("{argv:?}: server `{msg}`, ours {ours:?}")),
                }
            } else {
                // Wrong number of arguments, an unknown subcommand, a command the server
                // cannot GETKEYS: nothing to compare.
                tally.skipped += 1;
                let reason: String = msg.chars().take(60).collect();
                *tally.skip_reasons.entry(reason).or_default() += 1;
            }
        }
    }
}

/// Redis 6.2 has neither key specs nor `COMMAND DOCS`: the movable-key templates only, against
/// its own key finders (the table gives 6.2 the later servers' specs).
#[test]
fn key_extraction_matches_redis_6_2_getkeys() {
    let srv = Srv::start(&binary("redis-6.2"));
    let mut con = srv.conn();
    let mut tally = Tally::default();
    // Where 6.2 itself differs from every later server (the table follows the later ones):
    // an odd number of arguments after STREAMS (7.0 takes the first half), and an AUTH
    // password spelled "keys" (6.2 reads it as the KEYS option).
    let differs_on_6_2 = [
        "XREAD STREAMS a b 0",
        "MIGRATE h 1 \"\" 0 5 AUTH keys KEYS a",
        "MIGRATE h 1 \"\" 0 5 AUTH2 u keys KEYS a b c",
    ];
    for line in templates() {
        let known = command::lookup_argv(&[line.split(' ').next().unwrap().as_bytes()])
            .is_some_and(|c| c.servers & 1 != 0);
        if known && !differs_on_6_2.contains(&line) {
            compare_unordered(&mut con, &words(line), &mut tally);
        }
    }
    eprintln!("redis-6.2: {tally:?}");
    assert!(tally.mismatches.is_empty(), "{:#?}", tally.mismatches);
    assert!(
        tally.agreed_keys > 30,
        "only {} compared",
        tally.agreed_keys
    );
}

/// As [`compare`], but the keys in any order (6.2 lists `ZUNIONSTORE`'s destination last).
fn compare_unordered(con: &mut redis::Connection, argv: &[String], tally: &mut Tally) {
    let before = tally.mismatches.len();
    compare(con, argv, tally);
    if tally.mismatches.len() > before {
        let refs: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
        let mut ours: Vec<String> = command::key_positions(&refs)
            .unwrap_or_default()
            .into_iter()
            .map(|i| argv[i].clone())
            .collect();
        let mut cmd = redis::cmd("COMMAND");
        cmd.arg("GETKEYS").arg(argv);
        if let Ok(v) = cmd.query::<Value>(con) {
            let mut theirs: Vec<String> = items(&v).iter().map(text).collect();
            theirs.sort();
            ours.sort();
            if theirs == ours && !ours.is_empty() {
                tally.mismatches.pop();
                tally.agreed_keys += 1;
            }
        }
    }
}

#[test]
fn key_extraction_matches_command_getkeys() {
    // The servers with key specs (6.2 has none: its keys come from the same specs here).
    for name in ["redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1"] {
        let srv = Srv::start(&binary(name));
        let mut con = srv.conn();
        let mut tally = Tally::default();
        for line in templates() {
            compare(&mut con, &words(line), &mut tally);
        }
        let docs: Value = redis::cmd("COMMAND").arg("DOCS").query(&mut con).unwrap();
        let mut generated = 0;
        for (i, (cname, doc)) in pairs(&docs).into_iter().enumerate() {
            let args = get(&doc, "arguments")
                .map(|a| items(&a))
                .unwrap_or_default();
            let subs = get(&doc, "subcommands")
                .map(|s| pairs(&s))
                .unwrap_or_default();
            let mut lists = Vec::new();
            if subs.is_empty() {
                lists.extend(gen_from_docs(&[&cname], &args, i as u64 + 1));
            }
            for (j, (sname, sdoc)) in subs.iter().enumerate() {
                let sub = sname.split('|').nth(1).unwrap_or("");
                let sargs = get(sdoc, "arguments")
                    .map(|a| items(&a))
                    .unwrap_or_default();
                lists.extend(gen_from_docs(
                    &[&cname, sub],
                    &sargs,
                    (i * 100 + j) as u64 + 1,
                ));
            }
            for argv in lists {
                // Never run anything: GETKEYS only looks at the arguments.
                generated += 1;
                compare(&mut con, &argv, &mut tally);
            }
        }
        eprintln!(
            "{name}: {} generated + {} templates; agreed with keys {}, agreed without keys {}, \
             skipped (server cannot say) {}, mismatches {}",
            generated,
            templates().len(),
            tally.agreed_keys,
            tally.agreed_none,
            tally.skipped,
            tally.mismatches.len()
        );
        eprintln!("{name}: skipped because {:?}", tally.skip_reasons);
        assert!(
            tally.mismatches.is_empty(),
            "{name}: {:#?}",
            tally.mismatches
        );
        assert!(
            tally.agreed_keys > 300,
            "{name}: only {} compared",
            tally.agreed_keys
        );
    }
}

/// The rewrite table of what a replica obeys (`command::obey`) on every server: the
/// propagated form of each rule is refused from a normal client with the error the rule
/// names, its rewrite is accepted and has the effect a replica gives the original.
#[test]
fn the_obey_rewrites_are_accepted_by_every_server() {
    let mut errors = Vec::new();
    for server in SERVERS {
        let srv = Srv::start(&binary(server));
        let mut con = srv.conn();
        for rule in command::obey::RULES {
            let setup = |con: &mut redis::Connection| {
                let _: () = redis::cmd("DEL").arg("s").query(con).unwrap();
                for i in 1..=10 {
                    let _: String = redis::cmd("XADD")
                        .arg("s")
                        .arg(format!("{i}-1"))
                        .arg("f")
                        .arg("v")
                        .query(con)
                        .unwrap();
                }
            };
            let example: Vec<&[u8]> = rule.example.split(' ').map(str::as_bytes).collect();
            assert!(example[0].eq_ignore_ascii_case(rule.command.as_bytes()));
            setup(&mut con);
            let mut cmd = redis::cmd(rule.command);
            for a in &example[1..] {
                cmd.arg(*a);
            }
            match cmd.query::<Value>(&mut con) {
                Err(e)
                    if e.to_string()
                        .contains(rule.refused_with.trim_start_matches("ERR ")) => {}
                other => errors.push(format!(
                    "{server}: {} from a normal client: {other:?}, not {}",
                    rule.example, rule.refused_with
                )),
            }
            let Some(new) = command::obey::rewrite(&example) else {
                errors.push(format!("{server}: {} is not rewritten", rule.example));
                continue;
            };
            setup(&mut con);
            let mut cmd = redis::cmd(std::str::from_utf8(&new[0]).unwrap());
            for a in &new[1..] {
                cmd.arg(a.as_slice());
            }
            if let Err(e) = cmd.query::<Value>(&mut con) {
                errors.push(format!(
                    "{server}: the rewrite of {} is refused: {e}",
                    rule.example
                ));
                continue;
            }
            let len: i64 = redis::cmd("XLEN").arg("s").query(&mut con).unwrap();
            if len != rule.example_len {
                errors.push(format!(
                    "{server}: the rewrite of {} leaves {len} entries, a replica {}",
                    rule.example, rule.example_len
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
}
