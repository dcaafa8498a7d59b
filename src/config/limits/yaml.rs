//! The linear YAML pre-scan behind [`super::check_yaml`]: libyaml's tokenizer rules (quoted,
//! plain and block scalars, comments, the block indentation stack, anchors and aliases)
//! followed token by token, counting nesting and alias expansion instead of building events.
//! See [`super`] for the limits and why they exist; each scanning function names the libyaml
//! function it mirrors (unsafe-libyaml 0.2, the port serde_yaml_ng uses).

use std::collections::HashMap;

use super::{MAX_ALIASES, MAX_ALIAS_EXPANSION, MAX_DEPTH};

/// Why [`check_yaml`] refused a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 1-based line of the offending token.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for Refused {}

/// Pre-scans YAML text in one linear pass (see [`super`]).
pub fn check_yaml(text: &str) -> Result<(), Refused> {
    Scanner::new(text).run()
}

/// An anchor whose node has not ended yet.
struct OpenAnchor {
    name: String,
    start: usize,
    /// Expansion of the aliases inside this node so far.
    inner: usize,
    end: AnchorEnd,
}

#[derive(Clone, Copy)]
enum AnchorEnd {
    /// Not known until the next token.
    Pending {
        flow: usize,
        indent: i64,
        after_value: bool,
    },
    /// A scalar: ends with it.
    Scalar,
    /// A flow collection: ends when the flow depth is back to this.
    Flow(usize),
    /// A block node: ends at a block token left of this column (or at it, unless it is a `-`
    /// of an indentless sequence under a key).
    Block { indent: i64, after_value: bool },
}

struct Scanner<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
    /// Column in characters (libyaml counts characters).
    col: i64,
    flow: usize,
    /// libyaml's block indentation stack; `indent` is its top (-1 at the root).
    indents: Vec<i64>,
    indent: i64,
    simple_key_allowed: bool,
    /// Where a possible simple key starts: (line, column).
    key: Option<(usize, i64)>,
    /// The last indicator was `:` (a value follows).
    after_value: bool,
    anchors: HashMap<String, usize>,
    open: Vec<OpenAnchor>,
    aliases: usize,
    expansion: usize,
}

/// Stop scanning: libyaml reports a syntax error at or before this point, so nothing after it
/// is parsed.
struct Stop;

type Step = Result<Result<(), Stop>, Refused>;

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            s: text.as_bytes(),
            pos: 0,
            line: 1,
            col: 0,
            flow: 0,
            indents: Vec::new(),
            indent: -1,
            simple_key_allowed: true,
            key: None,
            after_value: false,
            anchors: HashMap::new(),
            open: Vec::new(),
            aliases: 0,
            expansion: 0,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.s.get(self.pos + i).copied().unwrap_or(0)
    }

    fn is_z(&self, i: usize) -> bool {
        self.pos + i >= self.s.len()
    }

    /// The length of a line break at offset `i`, 0 if none (libyaml's breaks: CR, LF, CRLF,
    /// NEL, LS, PS).
    fn brk(&self, i: usize) -> usize {
        match (self.at(i), self.at(i + 1), self.at(i + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_blank(&self, i: usize) -> bool {
        matches!(self.at(i), b' ' | b'\t')
    }

    fn is_blankz(&self, i: usize) -> bool {
        self.is_blank(i) || self.brk(i) > 0 || self.is_z(i)
    }

    fn is_alpha(c: u8) -> bool {
        c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
    }

    fn refuse(&self, message: String) -> Refused {
        Refused {
            line: self.line,
            message,
        }
    }

    /// Skips one character (not a break).
    fn skip(&mut self) {
        let Some(&c) = self.s.get(self.pos) else {
            return;
        };
        let width = match c {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        self.pos = (self.pos + width).min(self.s.len());
        self.col += 1;
    }

    /// Skips a line break (which must be there).
    fn skip_line(&mut self) {
        let n = self.brk(0).max(1);
        self.pos = (self.pos + n).min(self.s.len());
        self.line += 1;
        self.col = 0;
    }

    fn roll(&mut self, column: i64) -> Result<(), Refused> {
        if self.flow == 0 && self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
            self.check_depth()?;
        }
        Ok(())
    }

    fn unroll(&mut self, column: i64) {
        if self.flow != 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    fn check_depth(&self) -> Result<(), Refused> {
        if self.flow + self.indents.len() > MAX_DEPTH {
            return Err(self.refuse(format!(
                "nested deeper than {MAX_DEPTH} levels; sidekey refuses such files so that parsing stays fast"
            )));
        }
        Ok(())
    }

    fn save_key(&mut self) {
        if self.simple_key_allowed {
            self.key = Some((self.line, self.col));
        }
    }

    fn run(mut self) -> Result<(), Refused> {
        if self.s.starts_with("\u{feff}".as_bytes()) {
            self.pos = 3;
        }
        loop {
            match self.token()? {
                Ok(true) => continue,
                Ok(false) | Err(Stop) => return Ok(()),
            }
        }
    }

    /// Scans to the next token and consumes it; `Ok(false)` at the end of the text.
    fn token(&mut self) -> Result<Result<bool, Stop>, Refused> {
        // libyaml's scan_to_next_token.
        loop {
            while self.at(0) == b' '
                || ((self.flow != 0 || !self.simple_key_allowed) && self.at(0) == b'\t')
            {
                self.skip();
            }
            if self.at(0) == b'#' {
                while self.brk(0) == 0 && !self.is_z(0) {
                    self.skip();
                }
            }
            if self.brk(0) == 0 {
                break;
            }
            self.skip_line();
            if self.flow == 0 {
                self.simple_key_allowed = true;
            }
        }
        if self.key.is_some_and(|(l, _)| l < self.line) {
            self.key = None; // a simple key cannot span lines
        }
        self.unroll(self.col);
        if self.is_z(0) {
            self.close_anchors_at_token(false);
            return Ok(Ok(false));
        }
        let c = self.at(0);
        let column = self.col;
        if column == 0 && c == b'%' {
            self.skip_to_break();
            return Ok(Ok(true));
        }
        if column == 0
            && ((c == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                || (c == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
            && self.is_blankz(3)
        {
            // A document marker ends every open node.
            self.unroll(-1);
            self.close_all_anchors();
            self.key = None;
            self.simple_key_allowed = false;
            for _ in 0..3 {
                self.skip();
            }
            return Ok(Ok(true));
        }
        let is_block_entry = c == b'-' && self.is_blankz(1);
        self.close_anchors_at_token(is_block_entry);
        let step: Step = match c {
            b'[' | b'{' => {
                self.resolve_pending(AnchorEnd::Flow(self.flow));
                self.save_key();
                self.flow += 1;
                self.check_depth()?;
                self.simple_key_allowed = true;
                self.after_value = false;
                self.skip();
                Ok(Ok(()))
            }
            b']' | b'}' => {
                self.key = None;
                self.flow = self.flow.saturating_sub(1);
                self.simple_key_allowed = false;
                self.skip();
                self.close_flow_anchors();
                Ok(Ok(()))
            }
            b',' => {
                self.key = None;
                self.simple_key_allowed = true;
                self.skip();
                self.close_flow_anchors();
                Ok(Ok(()))
            }
            _ if is_block_entry => {
                if self.flow != 0 || !self.simple_key_allowed {
                    return Ok(Err(Stop));
                }
                self.roll(column)?;
                self.key = None;
                self.simple_key_allowed = true;
                self.after_value = false;
                self.skip();
                Ok(Ok(()))
            }
            b'?' if self.flow != 0 || self.is_blankz(1) => {
                if self.flow == 0 {
                    if !self.simple_key_allowed {
                        return Ok(Err(Stop));
                    }
                    self.roll(column)?;
                }
                self.key = None;
                self.simple_key_allowed = self.flow == 0;
                self.after_value = false;
                self.skip();
                Ok(Ok(()))
            }
            b':' if self.flow != 0 || self.is_blankz(1) => {
                // libyaml's fetch_value: a `:` that ends a simple key leaves no simple key
                // allowed (so a tab after it is skipped as a separator: `a:\t{…`), one that
                // starts an empty key allows one in the block context.
                self.simple_key_allowed = match self.key.take() {
                    Some((_, key_col)) => {
                        self.roll(key_col)?;
                        false
                    }
                    None if self.flow == 0 => {
                        if !self.simple_key_allowed {
                            return Ok(Err(Stop));
                        }
                        self.roll(column)?;
                        true
                    }
                    None => false,
                };
                self.after_value = true;
                self.skip();
                Ok(Ok(()))
            }
            b'*' | b'&' => self.anchor_or_alias(c == b'*'),
            b'!' => self.tag(),
            b'|' | b'>' if self.flow == 0 => {
                self.resolve_pending(AnchorEnd::Scalar);
                self.key = None;
                self.simple_key_allowed = true;
                let r = self.block_scalar();
                self.close_scalar_anchor();
                r
            }
            b'\'' | b'"' => {
                self.resolve_pending(AnchorEnd::Scalar);
                self.save_key();
                self.simple_key_allowed = false;
                self.quoted(c == b'\'');
                self.close_scalar_anchor();
                Ok(Ok(()))
            }
            _ => {
                let plain_start = !(self.is_blankz(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c))
                    || (c == b'-' && !self.is_blank(1))
                    || (self.flow == 0 && (c == b'?' || c == b':') && !self.is_blankz(1));
                if !plain_start {
                    return Ok(Err(Stop)); // libyaml: "found character that cannot start any token"
                }
                self.resolve_pending(AnchorEnd::Scalar);
                self.save_key();
                self.simple_key_allowed = false;
                let r = self.plain();
                self.close_scalar_anchor();
                r
            }
        };
        step.map(|r| r.map(|()| true))
    }

    fn skip_to_break(&mut self) {
        while self.brk(0) == 0 && !self.is_z(0) {
            self.skip();
        }
    }

    /// libyaml's scan_flow_scalar: to the closing quote (`''` and `\x` escapes).
    fn quoted(&mut self, single: bool) {
        self.skip();
        loop {
            if self.is_z(0) {
                return;
            }
            let c = self.at(0);
            if single && c == b'\'' {
                if self.at(1) == b'\'' {
                    self.skip();
                    self.skip();
                    continue;
                }
                self.skip();
                return;
            }
            if !single && c == b'"' {
                self.skip();
                return;
            }
            if !single && c == b'\\' {
                self.skip();
                if self.brk(0) > 0 {
                    self.skip_line();
                } else {
                    self.skip();
                }
                continue;
            }
            if self.brk(0) > 0 {
                self.skip_line();
            } else {
                self.skip();
            }
        }
    }

    /// libyaml's scan_plain_scalar.
    fn plain(&mut self) -> Step {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.col == 0
                && ((self.at(0) == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                    || (self.at(0) == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
                && self.is_blankz(3)
            {
                break;
            }
            if self.at(0) == b'#' {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                if self.flow != 0 && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    return Ok(Err(Stop));
                }
                if (c == b':' && self.is_blankz(1)) || (self.flow != 0 && b",[]{}".contains(&c)) {
                    break;
                }
                self.skip();
                leading_blanks = false;
            }
            if !(self.is_blank(0) || self.brk(0) > 0) {
                break;
            }
            while self.is_blank(0) || self.brk(0) > 0 {
                if self.is_blank(0) {
                    if leading_blanks && self.col < indent && self.at(0) == b'\t' {
                        return Ok(Err(Stop));
                    }
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow == 0 && self.col < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
        Ok(Ok(()))
    }

    /// libyaml's scan_block_scalar: the header, then lines indented at least as the content.
    fn block_scalar(&mut self) -> Step {
        self.skip();
        let mut increment = 0i64;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.skip(),
                d @ b'1'..=b'9' if increment == 0 => {
                    increment = i64::from(d - b'0');
                    self.skip();
                }
                b'0' => return Ok(Err(Stop)),
                _ => {}
            }
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.at(0) == b'#' {
            self.skip_to_break();
        }
        if self.brk(0) == 0 {
            // `|x`: a syntax error, unless the text ends here.
            return Ok(if self.is_z(0) { Ok(()) } else { Err(Stop) });
        }
        self.skip_line();
        let mut indent = if increment != 0 {
            if self.indent >= 0 {
                self.indent + increment
            } else {
                increment
            }
        } else {
            0
        };
        if self.block_breaks(&mut indent).is_err() {
            return Ok(Err(Stop));
        }
        while self.col == indent && !self.is_z(0) {
            self.skip_to_break();
            if self.is_z(0) {
                break;
            }
            self.skip_line();
            if self.block_breaks(&mut indent).is_err() {
                return Ok(Err(Stop));
            }
        }
        Ok(Ok(()))
    }

    /// libyaml's scan_block_scalar_breaks: blank lines and indentation; fixes an automatic
    /// indentation from the first content line.
    fn block_breaks(&mut self, indent: &mut i64) -> Result<(), Stop> {
        let mut max_indent = 0i64;
        loop {
            while (*indent == 0 || self.col < *indent) && self.at(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.col);
            if (*indent == 0 || self.col < *indent) && self.at(0) == b'\t' {
                return Err(Stop);
            }
            if self.brk(0) == 0 {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        Ok(())
    }

    fn tag(&mut self) -> Step {
        self.save_key();
        self.simple_key_allowed = false;
        self.skip();
        if self.at(0) == b'<' {
            while !self.is_blankz(0) && self.at(0) != b'>' {
                self.skip();
            }
            if self.at(0) == b'>' {
                self.skip();
            }
        } else {
            while !self.is_z(0)
                && (Self::is_alpha(self.at(0)) || b";/?:@&=+$.%!~*'()".contains(&self.at(0)))
            {
                self.skip();
            }
        }
        if !(self.is_blankz(0) || (self.flow != 0 && self.at(0) == b',')) {
            return Ok(Err(Stop)); // libyaml: "did not find expected whitespace or line break"
        }
        Ok(Ok(()))
    }

    fn anchor_or_alias(&mut self, alias: bool) -> Step {
        self.save_key();
        self.simple_key_allowed = false;
        let start = self.pos;
        self.skip();
        let name_start = self.pos;
        while Self::is_alpha(self.at(0)) {
            self.skip();
        }
        let name = String::from_utf8_lossy(&self.s[name_start..self.pos]).into_owned();
        if name.is_empty() || !(self.is_blankz(0) || b"?:,]}%@`".contains(&self.at(0))) {
            return Ok(Err(Stop)); // libyaml: "did not find expected alphabetic or numeric character"
        }
        if alias {
            self.resolve_pending(AnchorEnd::Scalar);
            self.alias(&name)?;
            self.close_scalar_anchor();
        } else {
            self.open.push(OpenAnchor {
                name,
                start,
                inner: 0,
                end: AnchorEnd::Pending {
                    flow: self.flow,
                    indent: self.indent,
                    after_value: self.after_value,
                },
            });
            if self.open.len() > MAX_DEPTH {
                return Err(self.refuse(format!("more than {MAX_DEPTH} nested anchors")));
            }
        }
        Ok(Ok(()))
    }

    fn alias(&mut self, name: &str) -> Result<(), Refused> {
        self.aliases += 1;
        if self.aliases > MAX_ALIASES {
            return Err(self.refuse(format!("more than {MAX_ALIASES} aliases")));
        }
        // An anchor still open (an alias inside its own node) counts as what it holds so far.
        let cost = match self.open.iter().rev().find(|a| a.name == name) {
            Some(a) => self.pos - a.start + a.inner,
            None => self.anchors.get(name).copied().unwrap_or(0),
        };
        self.expansion = self.expansion.saturating_add(cost);
        for a in &mut self.open {
            a.inner = a.inner.saturating_add(cost);
        }
        if self.expansion > MAX_ALIAS_EXPANSION {
            return Err(self.refuse(format!(
                "aliases stand for more than {} MiB of text",
                MAX_ALIAS_EXPANSION >> 20
            )));
        }
        Ok(())
    }

    /// The token after an anchor decides how its node ends.
    fn resolve_pending(&mut self, kind: AnchorEnd) {
        for a in self.open.iter_mut().rev() {
            let AnchorEnd::Pending { .. } = a.end else {
                break;
            };
            a.end = kind;
        }
    }

    fn finish(&mut self, a: OpenAnchor) {
        let size = self.pos - a.start + a.inner;
        self.anchors.insert(a.name, size);
    }

    fn close_scalar_anchor(&mut self) {
        while matches!(self.open.last(), Some(a) if matches!(a.end, AnchorEnd::Scalar)) {
            if let Some(a) = self.open.pop() {
                self.finish(a);
            }
        }
    }

    fn close_flow_anchors(&mut self) {
        while let Some(a) = self.open.last() {
            let done = match a.end {
                AnchorEnd::Flow(level) => self.flow <= level,
                // An empty node in a flow collection (`[&a , x]`).
                AnchorEnd::Pending { flow, .. } => flow > 0 && self.flow <= flow,
                _ => false,
            };
            if !done {
                break;
            }
            if let Some(a) = self.open.pop() {
                self.finish(a);
            }
        }
    }

    /// At a token in block context: block nodes end left of their key; an anchor followed by a
    /// line break holds a block node.
    fn close_anchors_at_token(&mut self, block_entry: bool) {
        if self.flow != 0 {
            return;
        }
        let line_start = self.s[..self.pos]
            .iter()
            .rev()
            .take_while(|&&b| b == b' ')
            .count() as i64
            == self.col;
        for a in self.open.iter_mut().rev() {
            if let AnchorEnd::Pending {
                flow: 0,
                indent,
                after_value,
            } = a.end
            {
                if line_start {
                    a.end = AnchorEnd::Block {
                        indent,
                        after_value,
                    };
                }
            }
        }
        if !line_start {
            return;
        }
        while let Some(a) = self.open.last() {
            let done = match a.end {
                AnchorEnd::Block {
                    indent,
                    after_value,
                } => self.col < indent || (self.col == indent && !(block_entry && after_value)),
                _ => false,
            };
            if !done {
                break;
            }
            if let Some(a) = self.open.pop() {
                self.finish(a);
            }
        }
    }

    fn close_all_anchors(&mut self) {
        while let Some(a) = self.open.pop() {
            self.finish(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        check_yaml(text).is_err()
    }

    #[test]
    fn deep_flow_and_block_nesting_are_refused() {
        assert!(refused(&"[".repeat(100_000)));
        assert!(refused(&"{a: ".repeat(100_000)));
        assert!(refused(&format!(
            "x: {}1{}",
            "[".repeat(65),
            "]".repeat(65)
        )));
        assert!(!refused(&format!(
            "x: {}1{}",
            "[".repeat(60),
            "]".repeat(60)
        )));
        assert!(refused(&"- ".repeat(100)));
        let mut deep = String::new();
        for i in 0..80 {
            deep.push_str(&" ".repeat(i));
            deep.push_str("a:\n");
        }
        assert!(refused(&deep));
    }

    #[test]
    fn brackets_in_scalars_and_comments_do_not_count() {
        let many = 1000;
        let text: String = (0..many)
            .map(|i| format!("- {{a: \"[[[{{\\\"{i}\", b: '[[''['}}\n# [[[[ {i}\n- k: x[[y #[[\n"))
            .collect();
        assert!(!refused(&text), "{:?}", check_yaml(&text));
        let block: String = (0..many)
            .map(|_| "- k: |\n    [[[[[[\n    {{{{\n  j: >-\n    [[[\n  l: \"]]]\"\n")
            .collect();
        assert!(!refused(&block), "{:?}", check_yaml(&block));
    }

    #[test]
    fn fake_closing_brackets_cannot_hide_real_depth() {
        // Each `"]"` is a string; the real depth keeps growing.
        let text = "[ \"]\", ".repeat(200);
        assert!(refused(&text));
        let text = "[ ']', ".repeat(200);
        assert!(refused(&text));
        // A plain scalar that looks like it opens a quote does not: `a"` then real brackets.
        let text = "[ a\", ".repeat(200);
        assert!(refused(&text));
        // A comment ends at a line break, Unicode ones included.
        let text = "[ # ]]]\u{2028}".repeat(200);
        assert!(refused(&text));
        // A block scalar ends where its indentation does, then brackets count again.
        let text = format!("a: |\n  \"\nb: {}", "[".repeat(100));
        assert!(refused(&text));
        let text = format!("- k: |\n    x\n  j: {}", "[".repeat(100));
        assert!(refused(&text));
    }

    #[test]
    fn aliases_are_bounded() {
        let list: String = (0..10_000).map(|i| format!("{i}, ")).collect();
        let aliases = "*a, ".repeat(10_000);
        let text = format!("a: &a [{list}]\nb: [{aliases}]\n");
        assert!(refused(&text));
        // Billion laughs.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(refused(&text));
        // A shared credential for many connections is fine.
        let mut text = String::from(
            "connections:\n  - {connection_id: a, provider_config_key: i, credentials: &c {type: API_KEY, apiKey: k}}\n",
        );
        for i in 0..10_000 {
            text.push_str(&format!(
                "  - {{connection_id: c{i}, provider_config_key: i, credentials: *c}}\n"
            ));
        }
        assert!(!refused(&text), "{:?}", check_yaml(&text));
        let block = "x: &b\n  k: v\n  l: [1, 2]\ny:\n".to_string() + &"  - *b\n".repeat(10_000);
        assert!(!refused(&block), "{:?}", check_yaml(&block));
    }

    #[test]
    fn ordinary_files_pass() {
        assert!(check_yaml(crate::config::BUNDLED_PROVIDERS).is_ok());
        for text in [
            "",
            "# only a comment\n",
            "---\na: 1\n...\n",
            "%YAML 1.1\n---\na: [1, {b: c}]\n",
            "a: 'it''s'\nb: \"q\\\"\"\nc: don't [x]\n",
            "a: b\n  c\n  d\n",
        ] {
            assert!(check_yaml(text).is_ok(), "{text:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(3000))]

        /// Invariant: the pre-scan never panics, and never accepts a text that libyaml nests
        /// deeper than the limit. A random prefix of YAML's tricky characters (quotes, comments,
        /// block scalar indicators, tabs, Unicode line breaks) is followed by 130 brackets: when
        /// serde_yaml_ng reports its recursion limit (128), the brackets were real nesting, and
        /// the pre-scan must have refused the text.
        #[test]
        fn never_accepts_what_libyaml_nests_deeply(
            prefix in "([\\[\\]{},:'\"#|>&*!?%@ \n\t-]|a|b|\r|\u{2028}|\u{85}|  ){0,40}",
            open in "[\\[{]",
            suffix in "([\\]}'\"#\n ]|a){0,10}",
        ) {
            let text = format!("{prefix}{}x{suffix}", open.repeat(130));
            let verdict = check_yaml(&text);
            if let Err(e) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
                if e.to_string().contains("recursion limit exceeded") {
                    proptest::prop_assert!(verdict.is_err(), "accepted {text:?}");
                }
            }
        }

        /// Invariant: any text is scanned without a panic, and a text the pre-scan accepts
        /// parses (or fails) in serde_yaml_ng without reaching its recursion limit.
        #[test]
        fn never_panics(text in "([\\[\\]{},:'\"#|>&*!? \n-]|a|b){0,200}") {
            if check_yaml(&text).is_ok() {
                if let Ok(v) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
                    proptest::prop_assert!(depth(&v) <= 2 * MAX_DEPTH);
                }
            }
        }
    }

    fn depth(v: &serde_yaml_ng::Value) -> usize {
        match v {
            serde_yaml_ng::Value::Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
            serde_yaml_ng::Value::Mapping(m) => {
                1 + m
                    .iter()
                    .map(|(k, v)| depth(k).max(depth(v)))
                    .max()
                    .unwrap_or(0)
            }
            serde_yaml_ng::Value::Tagged(t) => depth(&t.value),
            _ => 0,
        }
    }
}
