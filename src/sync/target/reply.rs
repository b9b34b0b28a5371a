//! Replies as text, and the elements of `EXEC`'s array reply (errors; `:0`/nil answers).

use crate::resp::ReplyParser;

/// The text of a simple reply: the line without its type byte, or a bulk string's body.
pub fn reply_text(reply: &[u8]) -> String {
    let body = match reply.first() {
        Some(b'$') | Some(b'=') | Some(b'!') => {
            let start = reply
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(reply.len(), |p| p + 2);
            &reply[start..reply.len().saturating_sub(2).max(start)]
        }
        Some(_) => reply[1..].strip_suffix(b"\r\n").unwrap_or(&reply[1..]),
        None => reply,
    };
    let mut text = String::from_utf8_lossy(body).into_owned();
    if text.len() > 300 {
        let mut cut = 300;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The first error among the elements of an array reply (`EXEC`'s), as text.
pub fn first_error_in_array(reply: &[u8]) -> Option<String> {
    array_errors(reply).into_iter().next().map(|(_, e)| e)
}

/// The elements of an array reply (`EXEC`'s) that are `:0` or nil: their indexes.
pub fn array_unchanged(reply: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    for_each_element(reply, |i, element| {
        if matches!(element, b":0\r\n" | b"$-1\r\n" | b"*-1\r\n" | b"_\r\n") {
            out.push(i);
        }
    });
    out
}

/// The elements of an array reply, with their indexes (each as its RESP bytes).
pub fn array_elements(reply: &[u8]) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    for_each_element(reply, |i, element| out.push((i, element)));
    out
}

/// Calls `f(index, bytes)` for each element of an array reply.
fn for_each_element<'a>(reply: &'a [u8], mut f: impl FnMut(usize, &'a [u8])) {
    if reply.first() != Some(&b'*') {
        return;
    }
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return;
    };
    let Some(n) = std::str::from_utf8(&reply[1..end])
        .ok()
        .and_then(|n| n.parse::<i64>().ok())
    else {
        return;
    };
    let mut at = end + 2;
    for i in 0..n.max(0) as usize {
        let Some(info) = reply
            .get(at..)
            .and_then(|rest| ReplyParser::default().parse(rest).ok().flatten())
        else {
            break;
        };
        let Some(element) = reply.get(at..at + info.len) else {
            break;
        };
        f(i, element);
        at += info.len;
    }
}

/// The errors among the elements of an array reply (`EXEC`'s): (index, text).
pub fn array_errors(reply: &[u8]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    if reply.first() != Some(&b'*') {
        return out;
    }
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return out;
    };
    let Some(n) = std::str::from_utf8(&reply[1..end])
        .ok()
        .and_then(|n| n.parse::<i64>().ok())
    else {
        return out;
    };
    let mut at = end + 2;
    for i in 0..n.max(0) as usize {
        let Some(info) = reply
            .get(at..)
            .and_then(|rest| ReplyParser::default().parse(rest).ok().flatten())
        else {
            break;
        };
        let Some(element) = reply.get(at..at + info.len) else {
            break;
        };
        if info.is_error() {
            out.push((i, reply_text(element)));
        }
        at += info.len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::target::{Refusal, Tag, show_key};

    #[test]
    fn texts() {
        assert_eq!(reply_text(b"-ERR bad\r\n"), "ERR bad");
        assert_eq!(reply_text(b"$3\r\nabc\r\n"), "abc");
        assert_eq!(show_key(b"a\xffb\n"), "a\\xffb\\n");
        assert_eq!(first_error_in_array(b"*2\r\n+OK\r\n:1\r\n"), None);
        assert_eq!(
            first_error_in_array(b"*3\r\n$1\r\nx\r\n*1\r\n:2\r\n-WRONGTYPE no\r\n").as_deref(),
            Some("WRONGTYPE no")
        );
        assert_eq!(
            array_errors(b"*4\r\n-ERR a\r\n+OK\r\n*-1\r\n-WRONGTYPE b\r\n"),
            vec![(0, "ERR a".to_string()), (3, "WRONGTYPE b".to_string())]
        );
        assert!(array_errors(b"*3\r\n+OK\r\n").is_empty());
        assert_eq!(
            array_unchanged(b"*5\r\n:0\r\n:1\r\n$-1\r\n+OK\r\n_\r\n"),
            vec![0, 2, 4]
        );
        let r = |e: &str| Refusal {
            tag: Tag::default(),
            error: e.into(),
        };
        assert!(r("ERR unknown command `MSETEX`").is_command_error());
        assert!(r("WRONGTYPE Operation against a key").is_command_error());
        assert!(!r("OOM command not allowed").is_command_error());
        assert!(!r("NOPERM this user has no permissions").is_command_error());
    }
}
