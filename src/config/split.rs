//! Parsing a large vault's `connections:` list on several threads.
//!
//! YAML parsing is most of the cost of loading a big vault (about 25 MB/s with serde_yaml_ng),
//! and the `connections:` list is most of the text. When the vault is written the usual way — a
//! top-level `connections:` key followed by a block sequence — the list is cut at item
//! boundaries, each piece is parsed as its own small document on its own thread, and the rest
//! of the file (everything but the list) is parsed on its own.
//!
//! This is only a faster route to the same result. Anything unusual (document markers,
//! directives, a flow-style list, a second `connections` key) skips it, and if any piece fails
//! to parse, the caller parses the whole file the ordinary way, so every error message comes
//! from that one parse. A cut can only land inside a node when a quoted scalar or flow
//! collection spans lines with a line at the list's own indentation starting with `- `; the
//! piece before such a cut ends inside that node and fails, which sends the file down the
//! ordinary path. An alias whose anchor lies in another piece fails the same way.

use super::vault::RawVault;

/// Below this size the ordinary parse is fast enough and threads are not worth starting.
pub const MIN_BYTES: usize = 1 << 20;

/// Parses `src` with up to `threads` threads; `None` means "use the ordinary parse".
pub fn parse(src: &str, threads: usize) -> Option<RawVault> {
    if src.len() < MIN_BYTES || threads < 2 {
        return None;
    }
    let layout = Layout::find(src)?;
    let pieces = layout.pieces(src, threads);
    let rest = format!("{}{}", &src[..layout.key_start], &src[layout.list_end..]);
    if rest.contains("connections") {
        return None; // a second key, perhaps quoted: let the ordinary parse report it
    }
    let results: Vec<Option<RawVault>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .iter()
            .map(|piece| {
                scope.spawn(move || {
                    let text = format!("connections:\n{piece}");
                    serde_yaml_ng::from_str::<RawVault>(&text).ok()
                })
            })
            .collect();
        let head = serde_yaml_ng::from_str::<RawVault>(&rest).ok();
        std::iter::once(head)
            .chain(handles.into_iter().map(|h| h.join().ok().flatten()))
            .collect()
    });
    let mut results = results.into_iter();
    let mut vault = results.next()??;
    vault.connections.reserve(layout.items.len());
    for part in results {
        vault.connections.extend(part?.connections);
    }
    Some(vault)
}

/// Where the `connections:` block sequence is.
#[derive(Debug)]
struct Layout {
    /// Start of the `connections:` line.
    key_start: usize,
    /// Start of each item's `- ` line; the first is where the list starts.
    items: Vec<usize>,
    /// End of the list (start of the next top-level line, or the end of the text).
    list_end: usize,
}

impl Layout {
    fn find(src: &str) -> Option<Self> {
        if src.trim_start_matches('\u{feff}').starts_with('%') {
            return None; // directives
        }
        let mut key_start = None;
        let mut indent = None;
        let mut items = Vec::new();
        let mut list_end = src.len();
        let mut pos = 0;
        for line in src.split_inclusive('\n') {
            let start = pos;
            pos += line.len();
            let text = line.trim_end_matches(['\n', '\r']);
            if text.starts_with("---") || text.starts_with("...") {
                return None; // several documents, or an explicit one
            }
            let Some(_) = key_start else {
                if text.trim_end() == "connections:" {
                    key_start = Some(start);
                }
                continue;
            };
            let body = text.trim_start_matches(' ');
            if body.is_empty() || body.starts_with('#') {
                continue; // blank lines and comments belong to the piece they are in
            }
            let this_indent = text.len() - body.len();
            let is_item = body == "-" || body.starts_with("- ");
            match indent {
                None if is_item => {
                    indent = Some(this_indent);
                    items.push(start);
                }
                None => return None, // a flow list, or something else: not this layout
                Some(n) if this_indent == n && is_item => items.push(start),
                Some(n) if this_indent > n => {}
                Some(_) => {
                    list_end = start;
                    break;
                }
            }
        }
        if items.is_empty() {
            return None;
        }
        Some(Self {
            key_start: key_start?,
            items,
            list_end,
        })
    }

    /// The list cut at item boundaries into at most `n` pieces of similar size.
    fn pieces<'a>(&self, src: &'a str, n: usize) -> Vec<&'a str> {
        let first = self.items[0];
        let target = (self.list_end - first).div_ceil(n).max(1);
        let mut pieces = Vec::with_capacity(n);
        let mut start = first;
        for &item in &self.items[1..] {
            if item - start >= target {
                pieces.push(&src[start..item]);
                start = item;
            }
        }
        pieces.push(&src[start..self.list_end]);
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vault::RawCredentials;

    /// Everything parsed, secrets included, in one comparable string.
    fn dump(v: &RawVault) -> String {
        let mut out = format!(
            "keys {:?}\nints {:?}\n",
            v.secret_keys.iter().map(|k| &k.sha256).collect::<Vec<_>>(),
            v.integrations
                .iter()
                .map(|i| (&i.unique_key, &i.provider))
                .collect::<Vec<_>>()
        );
        for c in &v.connections {
            let cred = match &c.credentials {
                RawCredentials::ApiKey { api_key } => api_key.expose().to_string(),
                RawCredentials::Basic { username, password } => {
                    format!("{}:{}", username.expose(), password.expose())
                }
                other => other.type_name().to_string(),
            };
            out.push_str(&format!(
                "{} {} {cred} {:?} {:?}\n",
                c.connection_id, c.provider_config_key, c.connection_config, c.metadata
            ));
        }
        out
    }

    fn big(items: &str, before: &str, after: &str) -> String {
        let mut s = String::from(before);
        s.push_str("connections:\n");
        while s.len() < MIN_BYTES + 1000 {
            s.push_str(&items.replace("N", &s.len().to_string()));
        }
        s.push_str(after);
        s
    }

    fn same_as_ordinary(src: &str) {
        let ordinary: RawVault = serde_yaml_ng::from_str(src).expect("ordinary parse");
        for threads in [2, 3, 8] {
            let fast = parse(src, threads).expect("takes the parallel route");
            assert_eq!(dump(&fast), dump(&ordinary), "threads {threads}");
        }
    }

    #[test]
    fn block_lists_in_several_styles_parse_the_same() {
        let before = "# vault\nsecret_keys: [{sha256: abc}]\nintegrations:\n  - {unique_key: i, provider: p}\n";
        let after = "# trailing comment\n";
        // Indented items, multi-line items, comments and blank lines between items.
        same_as_ordinary(&big(
            "  - connection_id: cN\n    provider_config_key: i\n    credentials: {type: API_KEY, apiKey: \"k-N\"}\n\n    # note\n    metadata: {a: [1, 2], b: \"x\\ny\"}\n",
            before,
            after,
        ));
        // Items at column 0, flow items, a following top-level key, CRLF line ends.
        same_as_ordinary(&big(
            "- {connection_id: cN, provider_config_key: i, credentials: {type: BASIC, username: u, password: 'p-N'}}\r\n",
            "",
            "integrations: [{unique_key: i, provider: p}]\r\n",
        ));
        // A block scalar and a nested list inside items.
        same_as_ordinary(&big(
            "  - connection_id: cN\n    provider_config_key: i\n    credentials:\n      type: API_KEY\n      apiKey: |\n        line-N\n        - not an item\n    connection_config:\n      list:\n        - a\n        - b\n",
            before,
            "",
        ));
    }

    #[test]
    fn unusual_layouts_take_the_ordinary_route() {
        let item = "  - {connection_id: cN, provider_config_key: i, credentials: {type: API_KEY, apiKey: k}}\n";
        let small = "connections:\n".to_string() + item;
        assert!(parse(&small, 4).is_none(), "small files");
        assert!(parse(&big(item, "", ""), 1).is_none(), "one thread");
        for (before, after) in [
            ("---\n", ""),
            ("%YAML 1.1\n---\n", ""),
            ("", "connections: []\n"),
            ("", "\"connections\": []\n"),
            ("", "...\n"),
        ] {
            assert!(
                parse(&big(item, before, after), 4).is_none(),
                "{before:?} {after:?}"
            );
        }
        let flow = format!("connections: [\n{}]\n", "{connection_id: a, provider_config_key: i, credentials: {type: API_KEY, apiKey: k}},\n".repeat(20_000));
        assert!(parse(&flow, 4).is_none(), "flow list");
    }

    #[test]
    fn a_cut_inside_a_node_or_an_alias_across_pieces_is_never_different() {
        // An anchor in the first item, aliases everywhere: later pieces cannot resolve it.
        let first = "  - {connection_id: a, provider_config_key: i, credentials: &cred {type: API_KEY, apiKey: k}}\n";
        let src = big(
            "  - {connection_id: cN, provider_config_key: i, credentials: *cred}\n",
            "",
            "",
        )
        .replacen("connections:\n", &format!("connections:\n{first}"), 1);
        assert!(serde_yaml_ng::from_str::<RawVault>(&src).is_ok());
        assert!(parse(&src, 4).is_none());

        // A double-quoted scalar spanning lines, one of which looks like an item: a cut there
        // leaves the piece before it unterminated; a cut elsewhere must give the same result.
        let item = "  - connection_id: cN\n    provider_config_key: i\n    credentials:\n      type: API_KEY\n      apiKey: \"k\n  - looks like an item\n      end\"\n";
        let src = big(item, "", "");
        let ordinary = serde_yaml_ng::from_str::<RawVault>(&src).expect("ordinary parse");
        for threads in 2..6 {
            if let Some(fast) = parse(&src, threads) {
                assert_eq!(dump(&fast), dump(&ordinary));
            }
        }
    }
}
