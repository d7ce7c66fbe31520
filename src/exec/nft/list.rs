//! Reading what `nft list ...` prints (nft 1.0.x's text form): the names of a
//! table's chains, sets and maps (`nft list chains ip`, `nft -t list sets ip`),
//! and the elements of one set or map (`nft list set ip kube-proxy NAME`).
//!
//! Text rather than `nft -j`: the same information, measured no slower (110k
//! chains: `list chains` 1.6-3.6 s, `-j` 2.8-3.5 s), and no JSON parser in the
//! library's dependencies.

use std::net::IpAddr;

use crate::model::Protocol;
use crate::nft::{Element, Family, KeyType, KeyValue, MapElement, Name, NftComment, Verdict};

/// The names of the objects of `kind` (`chain`, `set` or `map`) in the table
/// `family table` of a listing; other tables' are skipped. Sorted.
pub(super) fn names(
    text: &str,
    family: Family,
    table: &Name,
    kind: &str,
) -> Result<Vec<Name>, String> {
    let mut names = Vec::new();
    // Inside the table asked for (depth 1 is the table's body).
    let mut ours = false;
    let mut depth = 0usize;
    for line in text.lines().map(str::trim) {
        if line == "}" {
            depth = depth
                .checked_sub(1)
                .ok_or_else(|| format!("unbalanced `}}` in {line:?}"))?;
            continue;
        }
        let Some(head) = line.strip_suffix('{').map(str::trim_end) else {
            continue;
        };
        let words: Vec<&str> = head.split_whitespace().collect();
        if depth == 0 {
            match words.as_slice() {
                ["table", f, t] => ours = *f == family.as_str() && unquote(t) == table.as_str(),
                _ => return Err(format!("expected `table FAMILY NAME {{`, got {line:?}")),
            }
        } else if depth == 1 && ours {
            match words.as_slice() {
                [k, name] if *k == kind => names.push(name_of(name)?),
                _ => return Err(format!("expected `{kind} NAME {{`, got {line:?}")),
            }
        }
        depth += 1;
    }
    names.sort();
    Ok(names)
}

/// The elements of the set a listing (`nft list set F T NAME`) shows.
pub(super) fn set_elements(text: &str) -> Result<Vec<Element>, String> {
    let (key, verdict) = key_types(text)?;
    if verdict {
        return Err("a map's listing where a set's was expected".into());
    }
    elements(text)?
        .into_iter()
        .map(|e| {
            let (key, comment, rest) = element(&e, &key)?;
            if !rest.is_empty() {
                return Err(format!("unexpected {rest:?} after the key of {e:?}"));
            }
            Ok(Element { key, comment })
        })
        .collect()
}

/// The elements of the verdict map a listing (`nft list map F T NAME`) shows.
pub(super) fn map_elements(text: &str) -> Result<Vec<MapElement>, String> {
    let (key, verdict) = key_types(text)?;
    if !verdict {
        return Err("a set's listing where a verdict map's was expected".into());
    }
    elements(text)?
        .into_iter()
        .map(|e| {
            let (key, comment, rest) = element(&e, &key)?;
            let verdict = match rest.as_slice() {
                [":", v] => verdict_of(v, None)?,
                [":", v, chain] => verdict_of(v, Some(chain))?,
                _ => return Err(format!("expected `: VERDICT` after the key of {e:?}")),
            };
            Ok(MapElement {
                key,
                verdict,
                comment,
            })
        })
        .collect()
}

/// The key's field types from the `type A . B [: verdict]` line, and whether it
/// is a verdict map's.
fn key_types(text: &str) -> Result<(Vec<KeyType>, bool), String> {
    let line = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("type "))
        .ok_or("no `type` line")?;
    let (key, data) = match line.split_once(" : ") {
        Some((key, data)) => (key, Some(data.trim())),
        None => (line, None),
    };
    let verdict = match data {
        None => false,
        Some("verdict") => true,
        Some(other) => return Err(format!("a map of {other:?}, not of verdicts")),
    };
    let types = key
        .split(" . ")
        .map(|t| match t.trim() {
            "ipv4_addr" => Ok(KeyType::Ipv4Addr),
            "ipv6_addr" => Ok(KeyType::Ipv6Addr),
            "inet_proto" => Ok(KeyType::InetProto),
            "inet_service" => Ok(KeyType::InetService),
            other => Err(format!("key type {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    Ok((types, verdict))
}

/// The elements of `elements = { A, B, ... }` (over several lines), each as its
/// words (a quoted comment one word with its quotes); none without such a line.
fn elements(text: &str) -> Result<Vec<Vec<String>>, String> {
    let Some(at) = text.find("elements = {") else {
        return Ok(Vec::new());
    };
    let body = &text[at + "elements = {".len()..];
    let mut all = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in body.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                word.push(c);
            }
            _ if quoted => word.push(c),
            ' ' | '\t' | '\n' => end_word(&mut words, &mut word),
            ',' | '}' => {
                end_word(&mut words, &mut word);
                if words.is_empty() {
                    return Err(format!("an empty element before {c:?}"));
                }
                all.push(std::mem::take(&mut words));
                if c == '}' {
                    return Ok(all);
                }
            }
            _ => word.push(c),
        }
    }
    Err("`elements = {` without its `}`".into())
}

fn end_word(words: &mut Vec<String>, word: &mut String) {
    if !word.is_empty() {
        words.push(std::mem::take(word));
    }
}

/// An element's key, its comment, and the words after them.
type Parsed<'a> = (Vec<KeyValue>, Option<NftComment>, Vec<&'a str>);

/// An element's key (one value per field of `types`, joined by `.`) and
/// comment; the words after them (`: VERDICT` for a map) are returned as they
/// are. `timeout T` and `expires T` (the elements of a dynamic set) are skipped.
fn element<'a>(words: &'a [String], types: &[KeyType]) -> Result<Parsed<'a>, String> {
    let mut rest = words.iter().map(String::as_str);
    let mut key = Vec::with_capacity(types.len());
    for (i, t) in types.iter().enumerate() {
        if i > 0 && rest.next() != Some(".") {
            return Err(format!(
                "expected `.` between the key's fields in {words:?}"
            ));
        }
        let word = rest
            .next()
            .ok_or_else(|| format!("a short key in {words:?}"))?;
        key.push(key_value(word, *t)?);
    }
    let mut comment = None;
    let mut after = Vec::new();
    while let Some(word) = rest.next() {
        match word {
            "timeout" | "expires" => {
                rest.next();
            }
            "comment" => {
                let text = rest
                    .next()
                    .and_then(|c| c.strip_prefix('"')?.strip_suffix('"'))
                    .ok_or_else(|| format!("a comment without its quotes in {words:?}"))?;
                comment = Some(NftComment::new(text).map_err(|e| e.to_string())?);
            }
            _ => {
                after.push(word);
                after.extend(rest.by_ref());
            }
        }
    }
    Ok((key, comment, after))
}

fn key_value(word: &str, t: KeyType) -> Result<KeyValue, String> {
    let bad = || format!("{word:?} is not a {t:?}");
    Ok(match t {
        KeyType::Ipv4Addr | KeyType::Ipv6Addr => {
            let ip: IpAddr = word.parse().map_err(|_| bad())?;
            if ip.is_ipv4() != (t == KeyType::Ipv4Addr) {
                return Err(bad());
            }
            KeyValue::Addr(ip)
        }
        KeyType::InetProto => KeyValue::Proto(match word {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return Err(bad()),
        }),
        KeyType::InetService => KeyValue::Port(word.parse().map_err(|_| bad())?),
    })
}

fn verdict_of(word: &str, chain: Option<&&str>) -> Result<Verdict, String> {
    Ok(match (word, chain) {
        ("accept", None) => Verdict::Accept,
        ("drop", None) => Verdict::Drop,
        ("return", None) => Verdict::Return,
        ("jump", Some(c)) => Verdict::Jump(name_of(c)?),
        ("goto", Some(c)) => Verdict::Goto(name_of(c)?),
        _ => return Err(format!("verdict {word:?} {chain:?}")),
    })
}

fn unquote(word: &str) -> &str {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(word)
}

fn name_of(word: &str) -> Result<Name, String> {
    Name::new(unquote(word)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    /// `nft list chains ip` of nft 1.0.6, two tables.
    const CHAINS: &str = "table ip kube-proxy {
\tchain cluster-ips-check {
\t}
\tchain endpoint-2227R2K4-scale/svc-4357/tcp/http__10.0.170.52/8080 {
\t}
\tchain filter-input {
\t\ttype filter hook input priority filter; policy accept;
\t}
}
table ip filter {
\tchain INPUT {
\t\ttype filter hook input priority filter; policy accept;
\t}
}
";

    #[test]
    fn names_of_one_table() {
        assert_eq!(
            names(CHAINS, Family::Ip, &n("kube-proxy"), "chain").unwrap(),
            [
                n("cluster-ips-check"),
                n("endpoint-2227R2K4-scale/svc-4357/tcp/http__10.0.170.52/8080"),
                n("filter-input")
            ]
        );
        assert_eq!(
            names(CHAINS, Family::Ip, &n("filter"), "chain").unwrap(),
            [n("INPUT")]
        );
        assert!(
            names(CHAINS, Family::Ip6, &n("kube-proxy"), "chain")
                .unwrap()
                .is_empty()
        );
        assert!(
            names("", Family::Ip, &n("kube-proxy"), "chain")
                .unwrap()
                .is_empty()
        );
        let sets = "table ip6 t {\n\tset a {\n\t\ttype ipv6_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t}\n}\n";
        assert_eq!(names(sets, Family::Ip6, &n("t"), "set").unwrap(), [n("a")]);
        assert!(names("}\n", Family::Ip, &n("t"), "set").is_err());
        assert!(names("chain x {\n", Family::Ip, &n("t"), "set").is_err());
    }

    #[test]
    fn map_elements_over_lines_with_commas_in_comments() {
        let text = "table ip6 t {
\tmap m {
\t\ttype ipv6_addr . inet_proto . inet_service : verdict
\t\tcomment \"x { y }\"
\t\telements = { fd00::2 . sctp . 22 : drop,
\t\t\t     ::ffff:1.2.3.4 . udp . 53 : jump c,
\t\t\t     fd00::1 . tcp . 80 comment \"a, b } c\" : goto service-X/tcp }
\t}
}
";
        let got = map_elements(text).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0].key,
            [
                KeyValue::Addr("fd00::2".parse().unwrap()),
                KeyValue::Proto(Protocol::Sctp),
                KeyValue::Port(22)
            ]
        );
        assert_eq!(got[0].verdict, Verdict::Drop);
        assert_eq!(got[1].verdict, Verdict::Jump(n("c")));
        assert_eq!(got[2].verdict, Verdict::Goto(n("service-X/tcp")));
        assert_eq!(got[2].comment.as_ref().unwrap().as_str(), "a, b } c");
        assert!(set_elements(text).is_err());
    }

    #[test]
    fn set_elements_of_a_dynamic_set_and_an_empty_one() {
        let text = "table ip t {\n\tset a {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t\telements = { 10.0.0.9 expires 2h59m59s964ms, 10.0.0.8 timeout 3h expires 1s }\n\t}\n}\n";
        let got = set_elements(text).unwrap();
        assert_eq!(
            got.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            [
                vec![KeyValue::Addr("10.0.0.9".parse().unwrap())],
                vec![KeyValue::Addr("10.0.0.8".parse().unwrap())]
            ]
        );
        let empty = "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n}\n";
        assert!(set_elements(empty).unwrap().is_empty());
        assert!(map_elements(empty).is_err());
        // An IPv6 address in an IPv4 set, a port out of range, a missing `}`.
        for bad in [
            "type ipv4_addr\nelements = { ::1 }",
            "type inet_service\nelements = { 70000 }",
            "type ipv4_addr\nelements = { 1.2.3.4",
        ] {
            assert!(set_elements(bad).is_err(), "{bad}");
        }
    }
}
