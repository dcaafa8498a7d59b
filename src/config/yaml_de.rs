//! A streaming YAML deserializer with serde_yaml_ng 0.10's rules, so the vault is parsed one
//! event at a time instead of as a whole-document event list.
//!
//! serde_yaml_ng loads every event of a document (about 100 bytes each with its mark, plus the
//! scalar's own allocation) before it deserialises anything: 216 MB for a 100 000-connection
//! vault. Here the events come from `libyaml_safer` (a safe port of the same libyaml scanner
//! and parser that serde_yaml_ng drives through `unsafe-libyaml`, so it tokenizes the same way)
//! and are pulled as the deserializer asks for them. Only the events of anchored nodes are kept,
//! so that an alias can replay them. Everything else follows serde_yaml_ng's `de.rs` rule for
//! rule: plain-scalar resolution (null, booleans, integers with `0x`/`0o`/`0b`, floats,
//! `.inf`/`.nan`), quoted scalars as strings, tags (`!!int`, `!Variant` enums), empty scalars
//! as empty collections, the recursion limit of 128, the document rules (an empty stream is a
//! null document, a second document is refused) and its error messages and positions; a test
//! in `vault.rs` compares both on hand-written cases and generated vaults.
//!
//! One deliberate difference: serde_yaml_ng bounds alias replays to 100 per event of the whole
//! document; a stream does not know the document's length, so the bound here is 100 per event
//! read so far (stricter; the `config::limits` pre-scan bounds aliases before either runs).

use std::collections::HashMap;
use std::fmt::{self, Display};

use serde::de::{
    self, value::StrDeserializer, Deserialize, DeserializeSeed, Expected, IgnoredAny, Unexpected,
    Visitor,
};

const TAG_NULL: &str = "tag:yaml.org,2002:null";
const TAG_BOOL: &str = "tag:yaml.org,2002:bool";
const TAG_INT: &str = "tag:yaml.org,2002:int";
const TAG_FLOAT: &str = "tag:yaml.org,2002:float";

/// A position in the text (0-based, displayed 1-based as libyaml does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub index: u64,
    pub line: u64,
    pub column: u64,
}

impl Mark {
    fn from_lib(m: libyaml_safer::Mark) -> Self {
        Self {
            index: m.index,
            line: m.line,
            column: m.column,
        }
    }

    fn is_origin(&self) -> bool {
        self.line == 0 && self.column == 0
    }
}

impl Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_origin() {
            write!(f, "line {} column {}", self.line + 1, self.column + 1)
        } else {
            write!(f, "position {}", self.index)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

#[derive(Clone, Debug)]
struct Scalar {
    tag: Option<String>,
    value: String,
    style: Style,
}

#[derive(Clone, Debug)]
enum Event {
    Alias(usize),
    Scalar(Scalar),
    SequenceStart(Option<String>),
    SequenceEnd,
    MappingStart(Option<String>),
    MappingEnd,
    Void,
}

/// The deserializer's error, displayed exactly as serde_yaml_ng displays its own.
pub struct Error(Box<ErrorImpl>);

#[derive(Debug)]
enum ErrorImpl {
    Message(String, Option<(Mark, String)>),
    /// A scanner or parser error, already rendered as serde_yaml_ng renders libyaml's.
    Libyaml(String),
    EndOfStream,
    MoreThanOneDocument,
    RecursionLimitExceeded(Mark),
    RepetitionLimitExceeded,
    BytesUnsupported,
    UnknownAnchor(Mark),
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn new(e: ErrorImpl) -> Error {
    Error(Box::new(e))
}

fn fix_mark(mut error: Error, mark: Mark, path: Path<'_>) -> Error {
    if let ErrorImpl::Message(_, none @ None) = error.0.as_mut() {
        *none = Some((mark, path.to_string()));
    }
    error
}

impl ErrorImpl {
    fn mark(&self) -> Option<Mark> {
        match self {
            Self::Message(_, Some((mark, _)))
            | Self::RecursionLimitExceeded(mark)
            | Self::UnknownAnchor(mark) => Some(*mark),
            _ => None,
        }
    }
}

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            ErrorImpl::Libyaml(s) => return f.write_str(s),
            ErrorImpl::Message(msg, None) => f.write_str(msg)?,
            ErrorImpl::Message(msg, Some((_, path))) => {
                if path != "." {
                    write!(f, "{path}: ")?;
                }
                f.write_str(msg)?;
            }
            ErrorImpl::EndOfStream => f.write_str("EOF while parsing a value")?,
            ErrorImpl::MoreThanOneDocument => f.write_str(
                "deserializing from YAML containing more than one document is not supported",
            )?,
            ErrorImpl::RecursionLimitExceeded(_) => f.write_str("recursion limit exceeded")?,
            ErrorImpl::RepetitionLimitExceeded => f.write_str("repetition limit exceeded")?,
            ErrorImpl::BytesUnsupported => f.write_str(
                "serialization and deserialization of bytes in YAML is not implemented",
            )?,
            ErrorImpl::UnknownAnchor(_) => f.write_str("unknown anchor")?,
        }
        if let Some(mark) = self.0.mark() {
            if !mark.is_origin() {
                write!(f, " at {mark}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({self})")
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: Display>(msg: T) -> Self {
        new(ErrorImpl::Message(msg.to_string(), None))
    }
}

/// libyaml's error as serde_yaml_ng prints it: `problem at line L column C, context at …`.
fn render_libyaml(e: &libyaml_safer::Error) -> String {
    // The one message the ports word differently (libyaml_safer keeps C libyaml's typo).
    let mut out = match e.problem() {
        "did not find expected hexdecimal number" => "did not find expected hexadecimal number",
        p => p,
    }
    .to_string();
    let problem_mark = e.problem_mark().map(Mark::from_lib).unwrap_or_default();
    if !problem_mark.is_origin() {
        out.push_str(&format!(" at {problem_mark}"));
    } else if let Some(offset) = reader_offset(e) {
        if offset != 0 {
            out.push_str(&format!(" at position {offset}"));
        }
    }
    if let Some(context) = e.context() {
        out.push_str(&format!(", {context}"));
        let context_mark = e.context_mark().map(Mark::from_lib).unwrap_or_default();
        if !context_mark.is_origin() && context_mark != problem_mark {
            out.push_str(&format!(" at {context_mark}"));
        }
    }
    out
}

/// A reader error's byte offset: libyaml_safer shows it only in its `Display`
/// (`Reader error: PROBLEM (offset N, value V)`).
fn reader_offset(e: &libyaml_safer::Error) -> Option<u64> {
    if e.kind() != libyaml_safer::ErrorKind::Reader {
        return None;
    }
    let text = e.to_string();
    let rest = text.rsplit_once("(offset ")?.1;
    rest.split(',').next()?.trim().parse().ok()
}

/// Where a stored parse problem stops the document.
#[derive(Clone)]
enum Stop {
    Libyaml(String),
    UnknownAnchor(Mark),
}

impl Stop {
    fn error(&self) -> Error {
        match self {
            Self::Libyaml(s) => new(ErrorImpl::Libyaml(s.clone())),
            Self::UnknownAnchor(m) => new(ErrorImpl::UnknownAnchor(*m)),
        }
    }
}

/// How much text the parser decodes at a time.
const READ_CHUNK: usize = 8 << 10;

/// The pull side: libyaml's events for the first document, with the anchored nodes' events
/// recorded for aliases.
pub struct Stream<'a> {
    parser: libyaml_safer::Parser<std::io::BufReader<&'a [u8]>>,
    peeked: Option<(Event, Mark)>,
    stop: Option<Stop>,
    /// The first document's end was read: nothing follows.
    ended: bool,
    /// Any event of the first document was produced.
    started: bool,
    anchors: HashMap<String, usize>,
    /// Alias id → recording (serde_yaml_ng's id scheme, kept as it is).
    aliases: HashMap<usize, usize>,
    recordings: Vec<Vec<(Event, Mark)>>,
    /// Recordings still open, with the nesting depth their node started at.
    open: Vec<(usize, usize)>,
    depth: usize,
    events: usize,
    jumpcount: usize,
}

impl<'a> Stream<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut parser = libyaml_safer::Parser::new();
        parser.set_encoding(libyaml_safer::Encoding::Utf8);
        // In chunks: libyaml_safer decodes whatever `fill_buf` returns into its buffer of
        // `char`s at once, so the bare slice would hold the whole text again, four bytes a
        // character (134 MB for a 17.6 MB vault, more while that buffer grows).
        parser.set_input(std::io::BufReader::with_capacity(
            READ_CHUNK,
            text.as_bytes(),
        ));
        Self {
            parser,
            peeked: None,
            stop: None,
            ended: false,
            started: false,
            anchors: HashMap::new(),
            aliases: HashMap::new(),
            recordings: Vec::new(),
            open: Vec::new(),
            depth: 0,
            events: 0,
            jumpcount: 0,
        }
    }

    /// Reads the next event of the first document into `peeked` (or records why there is none).
    fn fill(&mut self) {
        while self.peeked.is_none() && self.stop.is_none() && !self.ended {
            // libyaml_safer 0.3 panics on a few malformed inputs where C libyaml reports an
            // error (a `\\` as the file's last character inside a double-quoted scalar) or
            // accepts the text (a tag followed directly by `,` in a flow collection): caught
            // here and refused with a message, so bad input is never a panic of ours.
            let parsed =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.parser.parse()));
            let ev = match parsed {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => {
                    self.stop = Some(Stop::Libyaml(render_libyaml(&e)));
                    return;
                }
                Err(payload) => {
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    self.stop = Some(Stop::Libyaml(format!(
                        "the YAML reader stopped on malformed input it cannot report ({what}): \
                         a `\\` at the very end of a double-quoted scalar, or a tag followed \
                         directly by `,`?"
                    )));
                    return;
                }
            };
            let mark = Mark::from_lib(ev.start_mark);
            use libyaml_safer::EventData as D;
            let (event, anchor) = match ev.data {
                D::StreamStart { .. } | D::DocumentStart { .. } => continue,
                D::StreamEnd => {
                    self.ended = true;
                    if !self.started {
                        self.started = true;
                        self.peeked = Some((Event::Void, mark));
                    }
                    return;
                }
                D::DocumentEnd { .. } => {
                    self.ended = true;
                    return;
                }
                D::Alias { anchor } => match self.anchors.get(&anchor) {
                    Some(id) => (Event::Alias(*id), None),
                    None => {
                        self.stop = Some(Stop::UnknownAnchor(mark));
                        return;
                    }
                },
                D::Scalar {
                    anchor,
                    tag,
                    value,
                    style,
                    ..
                } => {
                    let style = match style {
                        libyaml_safer::ScalarStyle::SingleQuoted => Style::SingleQuoted,
                        libyaml_safer::ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
                        libyaml_safer::ScalarStyle::Literal => Style::Literal,
                        libyaml_safer::ScalarStyle::Folded => Style::Folded,
                        _ => Style::Plain,
                    };
                    (Event::Scalar(Scalar { tag, value, style }), anchor)
                }
                D::SequenceStart { anchor, tag, .. } => (Event::SequenceStart(tag), anchor),
                D::SequenceEnd => (Event::SequenceEnd, None),
                D::MappingStart { anchor, tag, .. } => (Event::MappingStart(tag), anchor),
                D::MappingEnd => (Event::MappingEnd, None),
            };
            self.started = true;
            self.events += 1;
            self.record(&event, mark, anchor);
            self.peeked = Some((event, mark));
        }
    }

    /// Appends the event to every open recording, and opens (or, for a scalar, writes) the
    /// recording of a node that carries an anchor.
    fn record(&mut self, event: &Event, mark: Mark, anchor: Option<String>) {
        let starts = matches!(event, Event::SequenceStart(_) | Event::MappingStart(_));
        let ends = matches!(event, Event::SequenceEnd | Event::MappingEnd);
        if ends {
            self.depth = self.depth.saturating_sub(1);
        }
        for (r, _) in &self.open {
            self.recordings[*r].push((event.clone(), mark));
        }
        if ends {
            let depth = self.depth;
            self.open.retain(|(_, d)| *d != depth);
        }
        if let Some(anchor) = anchor {
            let id = self.anchors.len();
            self.anchors.insert(anchor, id);
            self.aliases.insert(id, self.recordings.len());
            if starts {
                self.open.push((self.recordings.len(), self.depth));
            }
            self.recordings.push(vec![(event.clone(), mark)]);
        }
        if starts {
            self.depth += 1;
        }
    }

    /// After the root node: the rest of the first document must parse, and no second
    /// document may follow (serde_yaml_ng's `from_str` rules).
    pub fn finish(&mut self) -> Result<()> {
        loop {
            self.fill();
            if let Some(stop) = &self.stop {
                return Err(stop.error());
            }
            if self.peeked.take().is_none() {
                break;
            }
        }
        // The first document ended; an empty stream has nothing after it.
        if self.started && !self.parser_at_end() {
            return Err(new(ErrorImpl::MoreThanOneDocument));
        }
        Ok(())
    }

    fn parser_at_end(&mut self) -> bool {
        // Caught as in `fill`: whatever follows the first document (even text on which
        // libyaml_safer panics) is a second document to serde_yaml_ng.
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.parser.parse()));
        matches!(
            next,
            Ok(Ok(libyaml_safer::Event {
                data: libyaml_safer::EventData::StreamEnd,
                ..
            }))
        )
    }
}

/// Path to the current value, as serde_yaml_ng prints it in messages.
#[derive(Copy, Clone)]
pub enum Path<'p> {
    Root,
    Seq { parent: &'p Path<'p>, index: usize },
    Map { parent: &'p Path<'p>, key: &'p str },
    Alias { parent: &'p Path<'p> },
    Unknown { parent: &'p Path<'p> },
}

impl Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Parent<'a>(&'a Path<'a>);
        impl Display for Parent<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    Path::Root => Ok(()),
                    path => write!(f, "{path}."),
                }
            }
        }
        match self {
            Path::Root => f.write_str("."),
            Path::Seq { parent, index } => write!(f, "{parent}[{index}]"),
            Path::Map { parent, key } => write!(f, "{}{key}", Parent(parent)),
            Path::Alias { parent } => write!(f, "{parent}"),
            Path::Unknown { parent } => write!(f, "{}?", Parent(parent)),
        }
    }
}

#[derive(Clone)]
struct CurrentEnum {
    name: Option<&'static str>,
    tag: String,
}

/// A deserializer positioned in the live stream or in an alias's replay.
pub struct De<'a, 'p> {
    s: &'p mut Stream<'a>,
    replay: Option<(usize, &'p mut usize)>,
    path: Path<'p>,
    remaining_depth: u8,
    current_enum: Option<CurrentEnum>,
}

impl<'a, 'p> De<'a, 'p> {
    pub fn new(s: &'p mut Stream<'a>) -> Self {
        Self {
            s,
            replay: None,
            path: Path::Root,
            remaining_depth: 128,
            current_enum: None,
        }
    }

    /// A deserializer for a node below the root, at `path` (so messages name it as the whole
    /// document's deserializer would), `depth` levels down.
    pub fn at(s: &'p mut Stream<'a>, path: Path<'p>, depth: u8) -> Self {
        Self {
            s,
            replay: None,
            path,
            remaining_depth: 128u8.saturating_sub(depth),
            current_enum: None,
        }
    }

    fn child<'q>(&'q mut self, path: Path<'q>) -> De<'a, 'q> {
        De {
            s: &mut *self.s,
            replay: self.replay.as_mut().map(|(r, p)| (*r, &mut **p)),
            path,
            remaining_depth: self.remaining_depth,
            current_enum: None,
        }
    }

    fn peek_event_mark(&mut self) -> Result<(&Event, Mark)> {
        if let Some((r, pos)) = &self.replay {
            return match self.s.recordings[*r].get(**pos) {
                Some((e, m)) => Ok((e, *m)),
                None => Err(new(ErrorImpl::EndOfStream)),
            };
        }
        self.s.fill();
        match &self.s.peeked {
            Some((e, m)) => Ok((e, *m)),
            None => Err(match &self.s.stop {
                Some(stop) => stop.error(),
                None => new(ErrorImpl::EndOfStream),
            }),
        }
    }

    fn peek_event(&mut self) -> Result<&Event> {
        self.peek_event_mark().map(|(e, _)| e)
    }

    fn next_event_mark(&mut self) -> Result<(Event, Mark)> {
        self.current_enum = None;
        if let Some((r, pos)) = &mut self.replay {
            return match self.s.recordings[*r].get(**pos) {
                Some((e, m)) => {
                    **pos += 1;
                    Ok((e.clone(), *m))
                }
                None => Err(new(ErrorImpl::EndOfStream)),
            };
        }
        self.s.fill();
        match self.s.peeked.take() {
            Some(em) => Ok(em),
            None => Err(match &self.s.stop {
                Some(stop) => stop.error(),
                None => new(ErrorImpl::EndOfStream),
            }),
        }
    }

    fn next_event(&mut self) -> Result<Event> {
        self.next_event_mark().map(|(e, _)| e)
    }

    /// Consumes the peeked event (known to exist).
    fn skip(&mut self) {
        let _ = self.next_event_mark();
    }

    fn jump<'q>(&'q mut self, id: usize, pos: &'q mut usize) -> Result<De<'a, 'q>> {
        self.s.jumpcount += 1;
        if self.s.jumpcount > self.s.events.saturating_mul(100) {
            return Err(new(ErrorImpl::RepetitionLimitExceeded));
        }
        let Some(&r) = self.s.aliases.get(&id) else {
            return Err(new(ErrorImpl::EndOfStream));
        };
        *pos = 0;
        Ok(De {
            s: &mut *self.s,
            replay: Some((r, pos)),
            path: Path::Alias { parent: &self.path },
            remaining_depth: self.remaining_depth,
            current_enum: None,
        })
    }

    fn ignore_any(&mut self) -> Result<()> {
        let mut depth = 0usize;
        loop {
            match self.next_event()? {
                Event::Alias(_) | Event::Scalar(_) | Event::Void => {}
                Event::SequenceStart(_) | Event::MappingStart(_) => depth += 1,
                Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    fn visit_sequence<'de, V: Visitor<'de>>(&mut self, visitor: V, mark: Mark) -> Result<V::Value> {
        let (value, len) = self.recursion_check(mark, |de| {
            let mut seq = SeqAccess {
                empty: false,
                de,
                len: 0,
            };
            let value = visitor.visit_seq(&mut seq)?;
            Ok((value, seq.len))
        })?;
        self.end_sequence(len)?;
        Ok(value)
    }

    fn visit_mapping<'de, V: Visitor<'de>>(&mut self, visitor: V, mark: Mark) -> Result<V::Value> {
        let (value, len) = self.recursion_check(mark, |de| {
            let mut map = MapAccess {
                empty: false,
                de,
                len: 0,
                key: None,
            };
            let value = visitor.visit_map(&mut map)?;
            Ok((value, map.len))
        })?;
        self.end_mapping(len)?;
        Ok(value)
    }

    fn end_sequence(&mut self, len: usize) -> Result<()> {
        let total = {
            let mut seq = SeqAccess {
                empty: false,
                de: self,
                len,
            };
            while de::SeqAccess::next_element::<IgnoredAny>(&mut seq)?.is_some() {}
            seq.len
        };
        self.next_event()?;
        if total == len {
            return Ok(());
        }
        struct ExpectedSeq(usize);
        impl Expected for ExpectedSeq {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.0 == 1 {
                    write!(f, "sequence of 1 element")
                } else {
                    write!(f, "sequence of {} elements", self.0)
                }
            }
        }
        Err(de::Error::invalid_length(total, &ExpectedSeq(len)))
    }

    fn end_mapping(&mut self, len: usize) -> Result<()> {
        let total = {
            let mut map = MapAccess {
                empty: false,
                de: self,
                len,
                key: None,
            };
            while de::MapAccess::next_entry::<IgnoredAny, IgnoredAny>(&mut map)?.is_some() {}
            map.len
        };
        self.next_event()?;
        if total == len {
            return Ok(());
        }
        struct ExpectedMap(usize);
        impl Expected for ExpectedMap {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.0 == 1 {
                    write!(f, "map containing 1 entry")
                } else {
                    write!(f, "map containing {} entries", self.0)
                }
            }
        }
        Err(de::Error::invalid_length(total, &ExpectedMap(len)))
    }

    fn recursion_check<T>(
        &mut self,
        mark: Mark,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let previous = self.remaining_depth;
        self.remaining_depth = match previous.checked_sub(1) {
            Some(d) => d,
            None => return Err(new(ErrorImpl::RecursionLimitExceeded(mark))),
        };
        let result = f(self);
        self.remaining_depth = previous;
        result
    }

    /// The shared shape of `deserialize_bool`/`_i64`/`_u64`/…: a plain scalar (or a literal
    /// one tagged with `tag`) that `parse` accepts.
    fn scalar_of<'de, V: Visitor<'de>>(
        &mut self,
        visitor: V,
        tag: &str,
        parse: impl FnOnce(&str, V) -> std::result::Result<Result<V::Value>, V>,
        again: impl FnOnce(&mut De<'a, '_>, V) -> Result<V::Value>,
    ) -> Result<V::Value> {
        let tagged_already = self.current_enum.is_some();
        let (next, mark) = self.next_event_mark()?;
        let path = self.path;
        let result = match next {
            Event::Alias(id) => {
                let mut pos = 0;
                return again(&mut self.jump(id, &mut pos)?, visitor)
                    .map_err(|e| fix_mark(e, mark, path));
            }
            Event::Scalar(ref scalar)
                if is_plain_or_tagged_literal(tag, scalar, tagged_already) =>
            {
                match parse(&scalar.value, visitor) {
                    Ok(r) => r,
                    Err(visitor) => Err(invalid_type(&next, &visitor)),
                }
            }
            _ => Err(invalid_type(&next, &visitor)),
        };
        result.map_err(|e| fix_mark(e, mark, self.path))
    }
}

struct SeqAccess<'x, 'a, 'p> {
    empty: bool,
    de: &'x mut De<'a, 'p>,
    len: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_, '_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.empty {
            return Ok(None);
        }
        match self.de.peek_event()? {
            Event::SequenceEnd | Event::Void => Ok(None),
            _ => {
                let index = self.len;
                let parent = self.de.path;
                let mut element = self.de.child(Path::Seq {
                    parent: &parent,
                    index,
                });
                self.len += 1;
                seed.deserialize(&mut element).map(Some)
            }
        }
    }
}

struct MapAccess<'x, 'a, 'p> {
    empty: bool,
    de: &'x mut De<'a, 'p>,
    len: usize,
    key: Option<String>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, '_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.empty {
            return Ok(None);
        }
        match self.de.peek_event()? {
            Event::MappingEnd | Event::Void => Ok(None),
            Event::Scalar(scalar) => {
                self.len += 1;
                match &mut self.key {
                    Some(k) => {
                        k.clear();
                        k.push_str(&scalar.value);
                    }
                    None => self.key = Some(scalar.value.clone()),
                }
                seed.deserialize(&mut *self.de).map(Some)
            }
            _ => {
                self.len += 1;
                self.key = None;
                seed.deserialize(&mut *self.de).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let parent = self.de.path;
        let path = match &self.key {
            Some(key) => Path::Map {
                parent: &parent,
                key,
            },
            None => Path::Unknown { parent: &parent },
        };
        let mut value = self.de.child(path);
        seed.deserialize(&mut value)
    }
}

struct EnumAccess<'x, 'a, 'p> {
    de: &'x mut De<'a, 'p>,
    name: Option<&'static str>,
    tag: String,
}

impl<'de, 'x, 'a, 'p> de::EnumAccess<'de> for EnumAccess<'x, 'a, 'p> {
    type Error = Error;
    type Variant = De<'a, 'x>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant)> {
        let variant = seed.deserialize(StrDeserializer::<Error>::new(&self.tag))?;
        let de = self.de;
        let mut visitor = De {
            s: &mut *de.s,
            replay: de.replay.as_mut().map(|(r, p)| (*r, &mut **p)),
            path: de.path,
            remaining_depth: de.remaining_depth,
            current_enum: None,
        };
        visitor.current_enum = Some(CurrentEnum {
            name: self.name,
            tag: self.tag,
        });
        Ok((variant, visitor))
    }
}

impl<'de> de::VariantAccess<'de> for De<'_, '_> {
    type Error = Error;

    fn unit_variant(mut self) -> Result<()> {
        Deserialize::deserialize(&mut self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(mut self, seed: T) -> Result<T::Value> {
        seed.deserialize(&mut self)
    }

    fn tuple_variant<V: Visitor<'de>>(mut self, _len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_seq(&mut self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        mut self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_struct(&mut self, "", fields, visitor)
    }
}

struct UnitVariantAccess<'x, 'a, 'p> {
    de: &'x mut De<'a, 'p>,
}

impl<'de> de::EnumAccess<'de> for UnitVariantAccess<'_, '_, '_> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        Ok((seed.deserialize(&mut *self.de)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariantAccess<'_, '_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"newtype variant",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"tuple variant",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"struct variant",
        ))
    }
}

fn visit_scalar<'de, V: Visitor<'de>>(
    visitor: V,
    scalar: &Scalar,
    tagged_already: bool,
) -> Result<V::Value> {
    let v = scalar.value.as_str();
    if let (Some(tag), false) = (&scalar.tag, tagged_already) {
        if tag == TAG_BOOL {
            return match parse_bool(v) {
                Some(v) => visitor.visit_bool(v),
                None => Err(de::Error::invalid_value(Unexpected::Str(v), &"a boolean")),
            };
        } else if tag == TAG_INT {
            return match visit_int(visitor, v) {
                Ok(result) => result,
                Err(_) => Err(de::Error::invalid_value(Unexpected::Str(v), &"an integer")),
            };
        } else if tag == TAG_FLOAT {
            return match parse_f64(v) {
                Some(v) => visitor.visit_f64(v),
                None => Err(de::Error::invalid_value(Unexpected::Str(v), &"a float")),
            };
        } else if tag == TAG_NULL {
            return match parse_null(v) {
                Some(()) => visitor.visit_unit(),
                None => Err(de::Error::invalid_value(Unexpected::Str(v), &"null")),
            };
        } else if tag.starts_with('!') && scalar.style == Style::Plain {
            return visit_untagged_scalar(visitor, v);
        }
    } else if scalar.style == Style::Plain {
        return visit_untagged_scalar(visitor, v);
    }
    visitor.visit_str(v)
}

fn parse_null(scalar: &str) -> Option<()> {
    match scalar {
        "null" | "Null" | "NULL" | "~" => Some(()),
        _ => None,
    }
}

fn parse_bool(scalar: &str) -> Option<bool> {
    match scalar {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

type Radix<T> = fn(&str, u32) -> std::result::Result<T, std::num::ParseIntError>;

fn parse_unsigned_int<T>(scalar: &str, from_str_radix: Radix<T>) -> Option<T> {
    let unpositive = scalar.strip_prefix('+').unwrap_or(scalar);
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unpositive.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(int) = from_str_radix(rest, radix) {
                return Some(int);
            }
        }
    }
    if unpositive.starts_with(['+', '-']) {
        return None;
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(unpositive, 10).ok()
}

fn parse_signed_int<T>(scalar: &str, from_str_radix: Radix<T>) -> Option<T> {
    let unpositive = if let Some(unpositive) = scalar.strip_prefix('+') {
        if unpositive.starts_with(['+', '-']) {
            return None;
        }
        unpositive
    } else {
        scalar
    };
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unpositive.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(int) = from_str_radix(rest, radix) {
                return Some(int);
            }
        }
        if let Some(rest) = scalar.strip_prefix(&format!("-{prefix}")) {
            if let Ok(int) = from_str_radix(&format!("-{rest}"), radix) {
                return Some(int);
            }
        }
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(unpositive, 10).ok()
}

fn parse_negative_int<T>(scalar: &str, from_str_radix: Radix<T>) -> Option<T> {
    for (prefix, radix) in [("-0x", 16), ("-0o", 8), ("-0b", 2)] {
        if let Some(rest) = scalar.strip_prefix(prefix) {
            if let Ok(int) = from_str_radix(&format!("-{rest}"), radix) {
                return Some(int);
            }
        }
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(scalar, 10).ok()
}

fn parse_f64(scalar: &str) -> Option<f64> {
    let unpositive = if let Some(unpositive) = scalar.strip_prefix('+') {
        if unpositive.starts_with(['+', '-']) {
            return None;
        }
        unpositive
    } else {
        scalar
    };
    if let ".inf" | ".Inf" | ".INF" = unpositive {
        return Some(f64::INFINITY);
    }
    if let "-.inf" | "-.Inf" | "-.INF" = scalar {
        return Some(f64::NEG_INFINITY);
    }
    if let ".nan" | ".NaN" | ".NAN" = scalar {
        return Some(f64::NAN.copysign(1.0));
    }
    if let Ok(float) = unpositive.parse::<f64>() {
        if float.is_finite() {
            return Some(float);
        }
    }
    None
}

fn digits_but_not_number(scalar: &str) -> bool {
    // Leading zeros followed by digits is a string in YAML 1.2.
    let scalar = scalar.strip_prefix(['-', '+']).unwrap_or(scalar);
    scalar.len() > 1 && scalar.starts_with('0') && scalar[1..].bytes().all(|b| b.is_ascii_digit())
}

fn visit_int<'de, V: Visitor<'de>>(
    visitor: V,
    v: &str,
) -> std::result::Result<Result<V::Value>, V> {
    if let Some(int) = parse_unsigned_int(v, u64::from_str_radix) {
        return Ok(visitor.visit_u64(int));
    }
    if let Some(int) = parse_negative_int(v, i64::from_str_radix) {
        return Ok(visitor.visit_i64(int));
    }
    if let Some(int) = parse_unsigned_int(v, u128::from_str_radix) {
        return Ok(visitor.visit_u128(int));
    }
    if let Some(int) = parse_negative_int(v, i128::from_str_radix) {
        return Ok(visitor.visit_i128(int));
    }
    Err(visitor)
}

fn visit_untagged_scalar<'de, V: Visitor<'de>>(visitor: V, v: &str) -> Result<V::Value> {
    if v.is_empty() || parse_null(v) == Some(()) {
        return visitor.visit_unit();
    }
    if let Some(boolean) = parse_bool(v) {
        return visitor.visit_bool(boolean);
    }
    let visitor = match visit_int(visitor, v) {
        Ok(result) => return result,
        Err(visitor) => visitor,
    };
    if !digits_but_not_number(v) {
        if let Some(float) = parse_f64(v) {
            return visitor.visit_f64(float);
        }
    }
    visitor.visit_str(v)
}

fn is_plain_or_tagged_literal(expected: &str, scalar: &Scalar, tagged_already: bool) -> bool {
    match (scalar.style, &scalar.tag, tagged_already) {
        (Style::Plain, _, _) => true,
        (Style::Literal, Some(tag), false) => tag == expected,
        _ => false,
    }
}

fn invalid_type(event: &Event, exp: &dyn Expected) -> Error {
    enum Void {}
    struct InvalidType<'a> {
        exp: &'a dyn Expected,
    }
    impl<'de> Visitor<'de> for InvalidType<'_> {
        type Value = Void;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.exp.fmt(f)
        }
    }
    match event {
        Event::Scalar(scalar) => match visit_scalar(InvalidType { exp }, scalar, false) {
            Ok(void) => match void {},
            Err(e) => e,
        },
        Event::SequenceStart(_) => de::Error::invalid_type(Unexpected::Seq, exp),
        Event::MappingStart(_) => de::Error::invalid_type(Unexpected::Map, exp),
        // Unreachable with libyaml's well-formed event stream; an error, never a panic.
        Event::Alias(_) | Event::SequenceEnd | Event::MappingEnd | Event::Void => {
            new(ErrorImpl::EndOfStream)
        }
    }
}

fn parse_tag(tag: &Option<String>) -> Option<String> {
    let tag = tag.as_deref()?;
    let rest = tag.strip_prefix('!')?;
    Some(if rest.is_empty() { tag } else { rest }.to_string())
}

impl<'de> de::Deserializer<'de> for &mut De<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let tagged_already = self.current_enum.is_some();
        let (peeked, mark) = self.peek_event_mark()?;
        // A tagged node is an enum: the variant's deserializer reads the node itself.
        let tag = if tagged_already {
            None
        } else {
            match peeked {
                Event::Scalar(s) => parse_tag(&s.tag),
                Event::SequenceStart(t) | Event::MappingStart(t) => parse_tag(t),
                _ => None,
            }
        };
        let path = self.path;
        if let Some(tag) = tag {
            return visitor
                .visit_enum(EnumAccess {
                    de: self,
                    name: None,
                    tag,
                })
                .map_err(|e| fix_mark(e, mark, path));
        }
        let (next, mark) = self.next_event_mark()?;
        match next {
            Event::Alias(id) => {
                let mut pos = 0;
                (&mut self.jump(id, &mut pos)?).deserialize_any(visitor)
            }
            Event::Scalar(scalar) => visit_scalar(visitor, &scalar, tagged_already),
            Event::SequenceStart(_) => self.visit_sequence(visitor, mark),
            Event::MappingStart(_) => self.visit_mapping(visitor, mark),
            Event::SequenceEnd | Event::MappingEnd => Err(new(ErrorImpl::EndOfStream)),
            Event::Void => visitor.visit_none(),
        }
        .map_err(|e| fix_mark(e, mark, path))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.scalar_of(
            visitor,
            TAG_BOOL,
            |v, visitor| match parse_bool(v) {
                Some(b) => Ok(visitor.visit_bool(b)),
                None => Err(visitor),
            },
            |de, visitor| de.deserialize_bool(visitor),
        )
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.scalar_of(
            visitor,
            TAG_INT,
            |v, visitor| match parse_signed_int(v, i64::from_str_radix) {
                Some(i) => Ok(visitor.visit_i64(i)),
                None => Err(visitor),
            },
            |de, visitor| de.deserialize_i64(visitor),
        )
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.scalar_of(
            visitor,
            TAG_INT,
            |v, visitor| match parse_signed_int(v, i128::from_str_radix) {
                Some(i) => Ok(visitor.visit_i128(i)),
                None => Err(visitor),
            },
            |de, visitor| de.deserialize_i128(visitor),
        )
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.scalar_of(
            visitor,
            TAG_INT,
            |v, visitor| match parse_unsigned_int(v, u64::from_str_radix) {
                Some(i) => Ok(visitor.visit_u64(i)),
                None => Err(visitor),
            },
            |de, visitor| de.deserialize_u64(visitor),
        )
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.scalar_of(
            visitor,
            TAG_INT,
            |v, visitor| match parse_unsigned_int(v, u128::from_str_radix) {
                Some(i) => Ok(visitor.visit_u128(i)),
                None => Err(visitor),
            },
            |de, visitor| de.deserialize_u128(visitor),
        )
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.scalar_of(
            visitor,
            TAG_FLOAT,
            |v, visitor| match parse_f64(v) {
                Some(f) => Ok(visitor.visit_f64(f)),
                None => Err(visitor),
            },
            |de, visitor| de.deserialize_f64(visitor),
        )
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let (next, mark) = self.next_event_mark()?;
        let path = self.path;
        match next {
            Event::Scalar(scalar) => visitor.visit_string(scalar.value),
            Event::Alias(id) => {
                let mut pos = 0;
                (&mut self.jump(id, &mut pos)?).deserialize_str(visitor)
            }
            other => Err(invalid_type(&other, &visitor)),
        }
        .map_err(|e| fix_mark(e, mark, path))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(new(ErrorImpl::BytesUnsupported))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(new(ErrorImpl::BytesUnsupported))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let tagged_already = self.current_enum.is_some();
        let is_some = match self.peek_event()? {
            Event::Alias(id) => {
                let id = *id;
                self.skip();
                let mut pos = 0;
                return (&mut self.jump(id, &mut pos)?).deserialize_option(visitor);
            }
            Event::Scalar(scalar) => {
                if scalar.style != Style::Plain {
                    true
                } else if let (Some(tag), false) = (&scalar.tag, tagged_already) {
                    if tag == TAG_NULL {
                        if let Some(()) = parse_null(&scalar.value) {
                            false
                        } else {
                            return Err(de::Error::invalid_value(
                                Unexpected::Str(&scalar.value),
                                &"null",
                            ));
                        }
                    } else {
                        true
                    }
                } else {
                    !scalar.value.is_empty() && parse_null(&scalar.value).is_none()
                }
            }
            Event::SequenceStart(_) | Event::MappingStart(_) => true,
            Event::SequenceEnd | Event::MappingEnd => return Err(new(ErrorImpl::EndOfStream)),
            Event::Void => false,
        };
        if is_some {
            visitor.visit_some(self)
        } else {
            self.skip();
            visitor.visit_none()
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let tagged_already = self.current_enum.is_some();
        let (next, mark) = self.next_event_mark()?;
        let path = self.path;
        match next {
            Event::Scalar(scalar) => {
                let is_null = if scalar.style != Style::Plain {
                    false
                } else if let (Some(tag), false) = (&scalar.tag, tagged_already) {
                    tag == TAG_NULL && parse_null(&scalar.value).is_some()
                } else {
                    scalar.value.is_empty() || parse_null(&scalar.value).is_some()
                };
                if is_null {
                    visitor.visit_unit()
                } else {
                    Err(de::Error::invalid_value(
                        Unexpected::Str(&scalar.value),
                        &"null",
                    ))
                }
            }
            Event::Alias(id) => {
                let mut pos = 0;
                (&mut self.jump(id, &mut pos)?).deserialize_unit(visitor)
            }
            Event::Void => visitor.visit_unit(),
            other => Err(invalid_type(&other, &visitor)),
        }
        .map_err(|e| fix_mark(e, mark, path))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        let (_, mark) = self.peek_event_mark()?;
        self.recursion_check(mark, |de| visitor.visit_newtype_struct(de))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let (next, mark) = self.next_event_mark()?;
        let path = self.path;
        match next {
            Event::Alias(id) => {
                let mut pos = 0;
                (&mut self.jump(id, &mut pos)?).deserialize_seq(visitor)
            }
            Event::SequenceStart(_) => self.visit_sequence(visitor, mark),
            other => {
                let empty = match &other {
                    Event::Void => true,
                    Event::Scalar(s) => s.value.is_empty() && s.style == Style::Plain,
                    _ => false,
                };
                if empty {
                    visitor.visit_seq(SeqAccess {
                        empty: true,
                        de: self,
                        len: 0,
                    })
                } else {
                    Err(invalid_type(&other, &visitor))
                }
            }
        }
        .map_err(|e| fix_mark(e, mark, path))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let (next, mark) = self.next_event_mark()?;
        let path = self.path;
        match next {
            Event::Alias(id) => {
                let mut pos = 0;
                (&mut self.jump(id, &mut pos)?).deserialize_map(visitor)
            }
            Event::MappingStart(_) => self.visit_mapping(visitor, mark),
            other => {
                let empty = match &other {
                    Event::Void => true,
                    Event::Scalar(s) => s.value.is_empty() && s.style == Style::Plain,
                    _ => false,
                };
                if empty {
                    visitor.visit_map(MapAccess {
                        empty: true,
                        de: self,
                        len: 0,
                        key: None,
                    })
                } else {
                    Err(invalid_type(&other, &visitor))
                }
            }
        }
        .map_err(|e| fix_mark(e, mark, path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        let path = self.path;
        let current_enum = self.current_enum.clone();
        let (next, mark) = self.peek_event_mark()?;
        if let Some(current) = current_enum {
            if let Event::Scalar(scalar) = next {
                if !scalar.value.is_empty() {
                    return visitor
                        .visit_enum(UnitVariantAccess { de: self })
                        .map_err(|e| fix_mark(e, mark, path));
                }
            }
            let message = match current.name {
                Some(name) => format!(
                    "deserializing nested enum in {name}::{} from YAML is not supported yet",
                    current.tag
                ),
                None => format!(
                    "deserializing nested enum in !{} from YAML is not supported yet",
                    current.tag
                ),
            };
            return Err(fix_mark(new(ErrorImpl::Message(message, None)), mark, path));
        }
        let result = match next {
            Event::Alias(id) => {
                let id = *id;
                self.skip();
                let mut pos = 0;
                (&mut self.jump(id, &mut pos)?).deserialize_enum(name, variants, visitor)
            }
            Event::Scalar(scalar) => match parse_tag(&scalar.tag) {
                Some(tag) => {
                    return visitor.visit_enum(EnumAccess {
                        de: self,
                        name: Some(name),
                        tag,
                    })
                }
                None => visitor.visit_enum(UnitVariantAccess { de: self }),
            },
            Event::MappingStart(t) | Event::SequenceStart(t) => {
                let unexpected = if matches!(next, Event::MappingStart(_)) {
                    Unexpected::Map
                } else {
                    Unexpected::Seq
                };
                match parse_tag(t) {
                    Some(tag) => {
                        return visitor.visit_enum(EnumAccess {
                            de: self,
                            name: Some(name),
                            tag,
                        })
                    }
                    None => Err(fix_mark(
                        de::Error::invalid_type(unexpected, &"a YAML tag starting with '!'"),
                        mark,
                        path,
                    )),
                }
            }
            Event::SequenceEnd | Event::MappingEnd | Event::Void => {
                Err(new(ErrorImpl::EndOfStream))
            }
        };
        result.map_err(|e| fix_mark(e, mark, path))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.ignore_any()?;
        visitor.visit_unit()
    }
}

/// Deserializes the one document of `text` with `seed` (serde_yaml_ng's `from_str` rules).
pub fn from_str_seed<'de, S: DeserializeSeed<'de>>(text: &str, seed: S) -> Result<S::Value> {
    let mut stream = Stream::new(text);
    let value = seed.deserialize(&mut De::new(&mut stream))?;
    stream.finish()?;
    Ok(value)
}

/// [`from_str_seed`] for a type.
pub fn from_str<T: de::DeserializeOwned>(text: &str) -> Result<T> {
    from_str_seed(text, std::marker::PhantomData::<T>)
}

/// [`from_str_seed`], also returning the path (serde_path_to_error's) of a failure.
pub fn from_str_seed_tracked<'de, S: DeserializeSeed<'de>>(
    text: &str,
    seed: S,
) -> std::result::Result<S::Value, (String, Error)> {
    let mut stream = Stream::new(text);
    let mut track = serde_path_to_error::Track::new();
    let value = {
        let mut root = De::new(&mut stream);
        let de = serde_path_to_error::Deserializer::new(&mut root, &mut track);
        seed.deserialize(de)
    };
    match value {
        Ok(v) => match stream.finish() {
            Ok(()) => Ok(v),
            Err(e) => Err((".".to_string(), e)),
        },
        Err(e) => Err((track.path().to_string(), e)),
    }
}
