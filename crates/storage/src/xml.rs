//! Small XML helpers shared by the pool and volume documents: parsing
//! with errors that name the element path, and escaping for output.

use roxmltree::{Document, Node};

use crate::{Error, Result};

/// Parses `text`, bounding its size (definitions are small documents).
pub fn parse<'a>(what: &str, text: &'a str) -> Result<Document<'a>> {
    const MAX_XML: usize = 1 << 20;
    if text.len() > MAX_XML {
        return Err(Error::invalid(format!(
            "{what} XML is {} bytes, more than the limit of {MAX_XML}",
            text.len()
        )));
    }
    Document::parse(text).map_err(|e| Error::invalid(format!("malformed {what} XML: {e}")))
}

/// The element children of `n`.
pub fn elements<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(|c| c.is_element())
}

/// Fails naming the first child of `n` (at `path`) that is not in `known`,
/// and any element that appears twice.
pub fn check_children(n: Node, path: &str, known: &[&str]) -> Result<()> {
    let mut seen: Vec<&str> = Vec::new();
    for c in elements(n) {
        let name = c.tag_name().name();
        if !known.contains(&name) {
            return Err(Error::invalid(format!(
                "unsupported element <{path}/{name}>"
            )));
        }
        if seen.contains(&name) {
            return Err(Error::invalid(format!(
                "element <{path}/{name}> appears more than once"
            )));
        }
        seen.push(name);
    }
    Ok(())
}

pub fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    elements(n).find(|c| c.tag_name().name() == name)
}

/// Text content of an element, trimmed (empty for `<x/>`).
pub fn text<'a>(n: Node<'a, '_>) -> &'a str {
    n.text().map(str::trim).unwrap_or("")
}

/// Text of child `name`, if present.
pub fn child_text<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(n, name).map(text)
}

/// A `<capacity unit='…'>N</capacity>` style element, in bytes.
pub fn scaled(n: Node, path: &str) -> Result<u64> {
    crate::units::scale(
        &format!("<{path}>"),
        text(n),
        n.attribute("unit").unwrap_or(""),
    )
}

/// Escapes text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}
