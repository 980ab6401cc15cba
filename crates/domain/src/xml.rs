//! A small owned XML tree and a writer that formats like libvirt (2-space indent, attribute
//! values in single quotes).
//!
//! Elements vireo keeps without understanding them (`<metadata>` children, cosmetic devices
//! such as `<graphics>`) are stored as [`XmlElement`]s so `dumpxml` gives them back. The tree
//! is the element as written: qualified names with their prefixes, attributes in document
//! order, text; plus the namespace declarations the element needs to stand on its own (a
//! prefix declared on `<domain>` is re-declared on the kept element that uses it). Comments
//! and processing instructions are dropped, as libvirt does, and whitespace-only text
//! between child elements is formatting, re-created by the writer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One element kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XmlElement {
    /// The qualified name as written, e.g. `graphics` or `libosinfo:libosinfo`.
    pub name: String,
    /// Attributes in document order (qualified names), namespace declarations first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attrs: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<XmlNode>,
}

/// A child of a kept element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XmlNode {
    Element(XmlElement),
    Text(String),
}

impl XmlElement {
    /// An element with no attributes or children.
    pub fn new(name: impl Into<String>) -> Self {
        XmlElement {
            name: name.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Adds an attribute (builder style).
    pub fn attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.attrs.push((name.to_string(), value.into()));
        self
    }

    /// Adds an attribute when `value` is set.
    pub fn attr_opt(self, name: &str, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.attr(name, v),
            None => self,
        }
    }

    /// Adds attributes kept from the input.
    pub fn attrs_from(mut self, extra: &[(String, String)]) -> Self {
        self.attrs.extend(extra.iter().cloned());
        self
    }

    /// Adds a child element.
    pub fn child(mut self, child: XmlElement) -> Self {
        self.children.push(XmlNode::Element(child));
        self
    }

    /// Adds child elements.
    pub fn children(mut self, children: impl IntoIterator<Item = XmlElement>) -> Self {
        self.children
            .extend(children.into_iter().map(XmlNode::Element));
        self
    }

    /// Sets the element's text.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.children.push(XmlNode::Text(text.into()));
        self
    }

    /// The local part of the name (after any prefix).
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    /// Formats the element (and its subtree) as a document fragment, libvirt style, with
    /// `indent` levels of two spaces before its first line.
    pub fn to_string_indented(&self, indent: usize) -> String {
        let mut out = String::new();
        write_element(&mut out, self, indent);
        out
    }
}

fn write_element(out: &mut String, e: &XmlElement, indent: usize) {
    push_indent(out, indent);
    out.push('<');
    out.push_str(&e.name);
    for (k, v) in &e.attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("='");
        escape_attr(out, v);
        out.push('\'');
    }
    if e.children.is_empty() {
        out.push_str("/>\n");
        return;
    }
    out.push('>');
    let has_text = e.children.iter().any(|c| matches!(c, XmlNode::Text(_)));
    if has_text {
        // Text (or mixed content) is written exactly as stored: added indentation would
        // change the content.
        for c in &e.children {
            match c {
                XmlNode::Text(t) => escape_text(out, t),
                XmlNode::Element(child) => {
                    let mut s = String::new();
                    write_element(&mut s, child, 0);
                    out.push_str(s.trim_end_matches('\n'));
                }
            }
        }
    } else {
        out.push('\n');
        for c in &e.children {
            if let XmlNode::Element(child) = c {
                write_element(out, child, indent + 1);
            }
        }
        push_indent(out, indent);
    }
    out.push_str("</");
    out.push_str(&e.name);
    out.push_str(">\n");
}

fn push_indent(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

/// Escapes an attribute value for single quotes. Tabs and line breaks become character
/// references: a parser would otherwise normalise them to spaces.
fn escape_attr(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// Escapes text content. A carriage return becomes a character reference so it survives
/// the parser's line-end normalisation.
fn escape_text(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// Namespace bindings already declared in the output: prefix (`None` = default) → URI.
type Scope = BTreeMap<Option<String>, String>;

/// Copies a parsed element into an owned tree, adding the namespace declarations it needs
/// to stand alone.
pub(crate) fn capture(node: roxmltree::Node) -> XmlElement {
    capture_in(node, &Scope::new())
}

fn capture_in(node: roxmltree::Node, outer: &Scope) -> XmlElement {
    let input = node.document().input_text();
    let name = element_qname(input, node.range().start).to_string();
    let mut scope = outer.clone();
    let mut decls: Vec<(String, String)> = Vec::new();
    let mut declare = |prefix: Option<&str>, uri: &str, scope: &mut Scope| {
        if prefix == Some("xml") {
            return;
        }
        let key = prefix.map(str::to_string);
        if scope.get(&key).map(String::as_str) == Some(uri) {
            return;
        }
        if key.is_none() && uri.is_empty() && !scope.contains_key(&None) {
            return; // no default namespace, none in scope: nothing to undo
        }
        let attr = match prefix {
            Some(p) => format!("xmlns:{p}"),
            None => "xmlns".to_string(),
        };
        decls.push((attr, uri.to_string()));
        scope.insert(key, uri.to_string());
    };
    let elem_prefix = name.split_once(':').map(|(p, _)| p);
    declare(
        elem_prefix,
        node.tag_name().namespace().unwrap_or(""),
        &mut scope,
    );
    let mut attrs = Vec::new();
    for a in node.attributes() {
        let qname = &input[a.range_qname()];
        if let (Some((prefix, _)), Some(uri)) = (qname.split_once(':'), a.namespace()) {
            declare(Some(prefix), uri, &mut scope);
        }
        attrs.push((qname.to_string(), a.value().to_string()));
    }
    decls.extend(attrs);

    let element_children = node.children().any(|c| c.is_element());
    let mixed = node
        .children()
        .any(|c| c.is_text() && !c.text().unwrap_or("").trim().is_empty());
    let mut children = Vec::new();
    for c in node.children() {
        if c.is_element() {
            children.push(XmlNode::Element(capture_in(c, &scope)));
        } else if c.is_text() {
            let t = c.text().unwrap_or("");
            // Whitespace between child elements is indentation, not content.
            if element_children && !mixed {
                continue;
            }
            match children.last_mut() {
                Some(XmlNode::Text(prev)) => prev.push_str(t), // text split by a comment
                _ => children.push(XmlNode::Text(t.to_string())),
            }
        }
    }
    XmlElement {
        name,
        attrs: decls,
        children,
    }
}

/// The qualified name of the element whose start tag begins at `start` (the `<`).
pub(crate) fn element_qname(input: &str, start: usize) -> &str {
    let rest = &input[start + 1..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(src: &str) -> String {
        let doc = roxmltree::Document::parse(src).unwrap();
        let first = doc.root_element().first_element_child().unwrap();
        capture(first).to_string_indented(0)
    }

    #[test]
    fn namespaces_are_declared_where_used() {
        let out = round(
            "<domain xmlns:a='urn:a'><a:x b='1' a:c='2'>\n  <a:y>t</a:y>\n  <z/>\n</a:x></domain>",
        );
        assert_eq!(
            out,
            "<a:x xmlns:a='urn:a' b='1' a:c='2'>\n  <a:y>t</a:y>\n  <z/>\n</a:x>\n"
        );
    }

    #[test]
    fn default_namespace_is_kept_and_undone() {
        let out = round("<d><x xmlns='urn:x'><y xmlns=''/></x></d>");
        assert_eq!(out, "<x xmlns='urn:x'>\n  <y xmlns=''/>\n</x>\n");
    }

    #[test]
    fn text_and_escapes_survive() {
        let src = "<d><x a='q&apos;&quot;&lt;&#10;'>a &amp; b<!-- c --> c</x></d>";
        let out = round(src);
        assert_eq!(out, "<x a='q&apos;&quot;&lt;&#10;'>a &amp; b c</x>\n");
        // and parsing the output gives the same tree
        let again = round(&format!("<d>{out}</d>"));
        assert_eq!(again, out);
    }

    #[test]
    fn mixed_content_is_written_inline() {
        let out = round("<d><x>a<b/>c</x></d>");
        assert_eq!(out, "<x>a<b/>c</x>\n");
    }
}
